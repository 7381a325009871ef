"""A plan with nothing to run is "in sync" only when every host's facts were read in full.

An unreachable host, or one blocked because a fact its plan needs (its ledger) could not be
read, has no step; the server must record the cluster out of sync, naming the host and why,
and run nothing. These call the controller's decision directly on a real store (SQLite, then
PostgreSQL).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from reconciler.desired.loader import load_repository
from reconciler.plan.steps import HostPlan, Plan
from reconciler.server.controller import Controller
from reconciler.server.decide import decide as decide_plan
from reconciler.server.source import GitSource
from reconciler.server.store.database import Store
from reconciler.transport.fake import FakeTransport
from tests.conftest import StoreOpener

FIXTURE = Path(__file__).resolve().parents[3] / "fixtures" / "config-repo"
REVISION = "a" * 40


def decide(tmp_path: Path, hosts: dict[str, HostPlan], open_store: StoreOpener) -> Store:
    store = open_store()
    controller = Controller(
        source=GitSource(str(tmp_path / "nowhere.git"), tmp_path / "state"),
        store=store,
        transports=lambda _: FakeTransport(),
        poll_interval=3600,
    )
    desired = load_repository(FIXTURE, REVISION)
    plan = Plan(id="p" * 16, revision=REVISION, clusters=("web",), hosts=hosts)
    # The transport is not reached when there is nothing to run.
    transport = FakeTransport()
    asyncio.run(decide_plan(controller.ctx, ("web",), desired, plan, transport))
    assert transport.calls == []
    return store


def test_an_unreachable_host_keeps_the_cluster_out_of_sync(
    tmp_path: Path, open_store: StoreOpener
) -> None:
    store = decide(tmp_path, {
        "web1": HostPlan(host="web1", facts_digest="d" * 64),
        "web2": HostPlan(host="web2", facts_digest="", reachable=False,
                         unknown_reason="connect timed out after 5s"),
    }, open_store)  # fmt: skip
    record = store.get_cluster("web")
    assert record is not None
    assert record.in_sync is False
    assert record.last_error == "web2: unreachable (connect timed out after 5s)"
    assert record.applied_revision is None
    assert store.list_plans(cluster="web") == []


def test_a_blocked_host_keeps_the_cluster_out_of_sync(
    tmp_path: Path, open_store: StoreOpener
) -> None:
    why = "web3: /var/lib/shoal/ledger.json: Permission denied"
    store = decide(tmp_path, {
        "web1": HostPlan(host="web1", facts_digest="d" * 64),
        "web3": HostPlan(host="web3", facts_digest="e" * 64, blocked=why),
    }, open_store)  # fmt: skip
    record = store.get_cluster("web")
    assert record is not None
    assert (record.in_sync, record.last_error, record.applied_revision) == (False, why, None)


def test_every_host_read_and_nothing_to_do_is_in_sync(
    tmp_path: Path, open_store: StoreOpener
) -> None:
    store = decide(tmp_path, {"web1": HostPlan(host="web1", facts_digest="d" * 64)}, open_store)
    record = store.get_cluster("web")
    assert record is not None
    assert (record.in_sync, record.last_error, record.applied_revision) == (True, None, REVISION)
