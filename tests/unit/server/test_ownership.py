"""Two servers on one real PostgreSQL store: one owner per cluster, fencing, takeover, wakes.

Each "server" is a real Controller (FakeCluster: fake hosts, real store) with its own
PostgresOwnership (advisory locks on a session connection of its own) on one database schema.
Ending the owner's session (pg_terminate_backend, as a cut connection or a dead machine would)
hands the cluster to the other at its next look, under a new epoch; everything the first one
writes under its old epoch is refused. Costs about 2 s, marked postgresql_app with the other
controller tests on PostgreSQL: `make test` runs them, `make unit` leaves them out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from reconciler.apply.events import ApplyEvent
from reconciler.server.execute import live_steps
from reconciler.server.lifecycle import ApprovalRecorded
from reconciler.server.postgres_ownership import PostgresOwnership
from reconciler.server.postgres_wake import PostgresPeers
from reconciler.server.store.database import Store
from reconciler.server.store.postgres_engine import conninfo_of
from reconciler.server.store.records import FencedOut
from tests.support.plans import make_plan
from tests.support.postgres import PostgresServer
from tests.unit.server.fake_cluster import FakeCluster

pytestmark = pytest.mark.postgresql_app


def server(tmp: Path, url: str, name: str) -> FakeCluster:
    ownership: Callable[[Store], PostgresOwnership] = lambda store: PostgresOwnership(  # noqa: E731
        conninfo_of(url), store, name
    )
    return FakeCluster(tmp, poll_interval=3600, stores=lambda _: Store.connect(url),
                       ownership=ownership)  # fmt: skip


def ownership_of(fc: FakeCluster) -> PostgresOwnership:
    owner = fc.controller.ctx.ownership
    assert isinstance(owner, PostgresOwnership)
    return owner


def end_session(postgres: PostgresServer, fc: FakeCluster) -> None:
    """What a cut connection or a dead machine does to the owner's session: it ends."""
    pid = ownership_of(fc).session_pid()
    assert pid is not None
    with psycopg.connect(postgres.conninfo(), autocommit=True) as db:
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # pg_terminate_backend only signals: the locks go when the backend has exited.
        deadline = time.monotonic() + 30
        while db.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchall():
            assert time.monotonic() < deadline, f"backend {pid} still there"
            time.sleep(0.01)


@pytest.fixture
def pair(tmp_path: Path, postgres: PostgresServer) -> tuple[FakeCluster, FakeCluster]:
    url = postgres.new_url()
    a, b = server(tmp_path / "a", url, "server-a"), server(tmp_path / "b", url, "server-b")
    # Both watch one repository, as servers behind one webhook do.
    b.source = b.controller.source = b.controller.ctx.source = a.source
    return a, b


async def test_only_the_owner_plans_and_applies_an_approval_sent_to_the_other(
    pair: tuple[FakeCluster, FakeCluster],
) -> None:
    a, b = pair
    await a.controller.reconcile_once()
    await b.controller.reconcile_once()
    (plan,) = a.store.list_plans()
    assert plan.state == "pending"
    assert b.transports == []  # b never looked at the hosts: web is a's
    owner = a.store.cluster_owner("web")
    assert owner is not None and (owner.owner, owner.epoch) == ("server-a", 1)
    # An approval that reached b is recorded there; the owner starts the run at its pass.
    recorded = await b.controller.approve(plan.id, actor="token:alice")
    assert isinstance(recorded, ApprovalRecorded) and recorded.waiting is not None
    assert b.store.list_runs() == [] and b.transports == []
    await a.controller.reconcile_once()
    (run,) = a.store.list_runs()
    assert run.fence == {"web": 1} and run.actor == "token:alice"
    assert a.applied_scripts() and b.applied_scripts() == []
    assert run.state in ("applied", "failed")  # the fake hosts refuse every change
    a.controller.ctx.ownership.close()
    b.controller.ctx.ownership.close()


async def test_a_cut_session_hands_the_cluster_over_and_fences_the_old_owner(
    pair: tuple[FakeCluster, FakeCluster], postgres: PostgresServer
) -> None:
    a, b = pair
    await a.controller.reconcile_once()
    unit = ("web",)
    stale = a.controller.ctx.fence(unit)
    assert stale == {"web": 1}
    # a starts a run, then loses its session mid-apply.
    assert a.source.head is not None
    plan = make_plan(a.source.head, host="web2")
    a.store.add_plan(plan, cluster="web", kind="change")
    run = a.store.approve_and_start_run(plan.id, actor="t", comment="", fence=stale)
    assert run is not None
    end_session(postgres, a)
    # Before anyone took over: a finds its lock session gone at the next phase, and stops.
    on_event = live_steps(a.controller.ctx, run)
    with pytest.raises(FencedOut) as lost:
        on_event(ApplyEvent("phase", "directors"))
    assert (lost.value.epoch, lost.value.current) == (1, None)
    assert a.controller.ctx.fence(unit) is None  # a knows it owns nothing now
    await b.controller.reconcile_once()
    owner = b.store.cluster_owner("web")
    assert owner is not None and (owner.owner, owner.epoch) == ("server-b", 2)
    # b took the interrupted run over (adopted under its epoch, then recovered and closed).
    taken = b.store.get_run(run.id)
    assert taken is not None and taken.fence == {"web": 2} and taken.state == "interrupted"
    assert [e.run_id for e in b.store.list_audit(action="run.taken_over")] == [run.id]
    # a's writes under epoch 1 are refused, and write nothing.
    with pytest.raises(FencedOut):
        a.store.check_fence(stale)
    with pytest.raises(FencedOut):
        a.store.finish_run(run.id, ok=True, plan_state="applied", run_state="applied",
                           result={}, fence=stale)  # fmt: skip
    again = b.store.get_run(run.id)
    assert again is not None and again.state == "interrupted"
    # At its next look a finds its session gone, cannot get the lock back, and keeps off.
    looked = len(a.transports)
    await a.controller.reconcile_once()
    assert len(a.transports) == looked and a.controller.ctx.fence(unit) is None
    a.controller.ctx.ownership.close()
    b.controller.ctx.ownership.close()


async def test_the_watch_takes_over_a_dead_owners_cluster_without_waiting_for_a_pass(
    pair: tuple[FakeCluster, FakeCluster], postgres: PostgresServer
) -> None:
    a, b = pair
    await a.controller.reconcile_once()
    await b.controller.reconcile_once()  # b knows the units, owns none
    assert b.controller.known_units == [("web",)] and b.controller.ctx.fence(("web",)) is None
    assert await b.controller.take_over_free_units() == []  # a is alive: nothing to take
    assert a.source.head is not None
    plan = make_plan(a.source.head, host="web2")
    a.store.add_plan(plan, cluster="web", kind="change")
    run = a.store.approve_and_start_run(plan.id, actor="t", comment="",
                                        fence=a.controller.ctx.fence(("web",)))  # fmt: skip
    assert run is not None
    end_session(postgres, a)  # a is gone, mid-run
    wakes = b.controller.wake_requests
    assert await b.controller.take_over_free_units() == [("web",)]
    assert b.controller.wake_requests == wakes + 1  # and a pass of b's follows
    taken = b.store.get_run(run.id)
    assert taken is not None and taken.state == "interrupted" and taken.fence == {"web": 2}
    a.controller.ctx.ownership.close()
    b.controller.ctx.ownership.close()


async def test_a_wake_on_one_server_wakes_the_other(
    pair: tuple[FakeCluster, FakeCluster], postgres: PostgresServer
) -> None:
    a, b = pair
    url_a = conninfo_of(postgres.url())
    loop = asyncio.get_running_loop()
    peers_a = PostgresPeers(url_a, a.store, "server-a")
    peers_b = PostgresPeers(url_a, b.store, "server-b")
    a.controller.peers, b.controller.peers = peers_a, peers_b
    peers_a.start(loop, a.controller.wake_here)
    peers_b.start(loop, b.controller.wake_here)
    try:
        for peers in (peers_a, peers_b):
            assert await asyncio.to_thread(peers.listening.wait, 30)
        before_a, before_b = a.controller.wake_requests, b.controller.wake_requests
        b.controller.wake("webhook (github)")
        assert b.controller.wake_requests == before_b + 1
        deadline = time.monotonic() + 30
        while a.controller.wake_requests == before_a and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert a.controller.wake_requests == before_a + 1
        # b skipped its own notification: one wake each, not two.
        await asyncio.sleep(0.2)
        assert b.controller.wake_requests == before_b + 1
    finally:
        await asyncio.to_thread(peers_a.stop)
        await asyncio.to_thread(peers_b.stop)
