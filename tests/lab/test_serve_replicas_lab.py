"""Three real `shoal serve` processes on one real PostgreSQL store, against the lab's hosts.

- the revision is planned once, by the server that owns the cluster (the others never plan);
- 50 webhooks at once, spread over the three, make no second plan;
- an approval sent to a server that does not own the cluster is applied by the owner;
- `kill -9` of the owner while it applies: another server takes the cluster over within 30 s,
  adopts the run (audited `run.taken_over`) and rolls it back; every host's facts are compared
  with those the plan was made from.

Costs about a minute: a lab of its own (its hosts are changed and killed mid-apply), three
server start-ups, one apply and its rollback.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lab import Lab, Topology
from reconciler.server.store.database import Store
from tests.lab.server_support import Repo, ServeProcess, sign
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

PUSH = b'{"ref":"refs/heads/main"}'
TAKEOVER_DEADLINE = 30.0


def webhook_headers() -> dict[str, str]:
    return {"X-Hub-Signature-256": sign(PUSH), "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()), "Content-Type": "application/json"}  # fmt: skip


async def until(what: str, check: Any, deadline: float) -> Any:
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def first_snapshot(lab: Lab, store: Store, plan: Any, run_id: str) -> None:
    """Until a host of `plan` has its snapshot (the apply is under way); the run still applying."""
    backup = f"/var/lib/shoal/backups/{plan.id}"
    first = sorted(h for h, hp in plan.plan.hosts.items() if hp.steps)
    while True:
        probes = await asyncio.gather(
            *(lab.exec(h, ["test", "-d", backup], check=False) for h in first)
        )
        if any(p.returncode == 0 for p in probes):
            return
        current = store.get_run(run_id)
        assert current is not None and current.state == "applying", "ended too soon"
        await asyncio.sleep(0.01)


async def test_three_servers_one_owner_and_a_takeover_after_kill_9(
    session_token: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.new_url()
    store = Store.connect(url)
    async with Lab.up(f"p{session_token}", Topology.default(), ephemeral=True) as lab:
        repo = Repo(tmp_path, lab)
        sha = repo.push(lambda _: None, "the cluster as the fixture has it")
        servers = [ServeProcess(lab, tmp_path, repo.bare, store_url=url, name=n)
                   for n in ("a", "b", "c")]  # fmt: skip
        try:
            await asyncio.gather(*(s.start() for s in servers))

            async def planned() -> list[Any]:
                return [p for p in store.list_plans(cluster="web") if p.revision == sha]

            (plan,) = await until("the plan", planned, time.monotonic() + 120)
            owner_row = store.cluster_owner("web")
            assert owner_row is not None
            (owner,) = [s for s in servers if f":{s.port}:" in owner_row.owner]
            others = [s for s in servers if s is not owner]

            # 50 webhooks at once over the three servers: every one wakes, none plans again.
            answers = await asyncio.gather(*(
                servers[i % 3].http.post("/webhooks/git", content=PUSH, headers=webhook_headers())
                for i in range(50)
            ))  # fmt: skip
            assert [r.status_code for r in answers] == [202] * 50

            async def settled() -> bool:
                loops = [(await s.get("/clusters"))["loop"] for s in servers]
                return all(lp["passes_started"] == lp["passes_completed"] for lp in loops)

            await asyncio.sleep(1.0)
            await until("the passes the webhooks asked for", settled, time.monotonic() + 60)
            assert [p.id for p in await planned()] == [plan.id]
            created = [e for e in store.list_audit(action="plan.created", cluster="web")]
            assert len(created) == 1 and created[0].plan_id == plan.id

            # Approved through a server that does not own web: the owner applies it.
            approved = await others[0].http.post(f"/plans/{plan.id}/approve",
                                                 headers=others[0].auth("approver"))  # fmt: skip
            assert approved.status_code == 202, approved.text
            assert approved.json()["state"] == "approved"

            async def started() -> list[Any]:
                return store.list_runs(plan_id=plan.id)

            (run,) = await until("the owner's run", started, time.monotonic() + 60)
            assert run.fence == {"web": owner_row.epoch}
            # Killed as soon as the first host has its snapshot: the apply is under way.
            await first_snapshot(lab, store, plan, run.id)
            owner.kill()
            killed_at = time.monotonic()

            async def closed() -> Any:
                current = store.get_run(run.id)
                return current if current is not None and current.state != "applying" else None

            done = await until("the takeover", closed, killed_at + TAKEOVER_DEADLINE)
            assert done.state == "interrupted", done
            new_owner = store.cluster_owner("web")
            assert new_owner is not None and new_owner.epoch == owner_row.epoch + 1
            assert any(f":{s.port}:" in new_owner.owner for s in others), new_owner
            assert done.fence == {"web": new_owner.epoch}
            taken = store.list_audit(action="run.taken_over")
            assert [e.run_id for e in taken] == [run.id]
            recovery = done.recovery or {}
            assert "error" not in recovery, recovery
            # Every host back at the facts the plan was made from (or, had the apply ended,
            # at the plan's end state): compared digest by digest.
            if recovery.get("outcome") != "converged":
                assert recovery["outcome"] == "rolled_back", recovery
                assert recovery["hosts_at_pre_apply_state"] == sorted(plan.plan.hosts)
                for host, hp in plan.plan.hosts.items():
                    facts = await others[0].get(f"/hosts/{host}/facts")
                    assert facts["digest"] == hp.facts_digest, host
        finally:
            for s in servers:
                await s.stop()
                await s.http.aclose()
            store.close()


async def test_an_owner_whose_session_is_cut_mid_apply_is_fenced_out(
    session_token: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    """The owner's session ends while it applies (what a cut connection does, once keepalives
    give up): the other server takes the cluster over and records the run; every later write
    of the first one is refused, and it stops at its next phase (its log says so)."""
    url = postgres.new_url()
    store = Store.connect(url)
    async with Lab.up(f"q{session_token}", Topology.default(), ephemeral=True) as lab:
        repo = Repo(tmp_path, lab)
        sha = repo.push(lambda _: None, "the cluster as the fixture has it")
        first_server = ServeProcess(lab, tmp_path, repo.bare, store_url=url, name="a")
        servers = [first_server]
        try:
            await first_server.start()

            async def planned() -> list[Any]:
                return [p for p in store.list_plans(cluster="web") if p.revision == sha]

            (plan,) = await until("the plan", planned, time.monotonic() + 120)
            second = ServeProcess(lab, tmp_path, repo.bare, store_url=url, name="b")
            servers.append(second)
            await second.start()
            owner_row = store.cluster_owner("web")
            assert owner_row is not None and f":{first_server.port}:" in owner_row.owner
            approver = first_server.auth("approver")
            approved = await first_server.http.post(f"/plans/{plan.id}/approve", headers=approver)
            assert approved.status_code == 202, approved.text
            run_id = approved.json()["run_id"]
            await first_snapshot(lab, store, plan, run_id)
            # End the owner's lock session only; its store connection stays up.
            with psycopg.connect(postgres.conninfo(), autocommit=True) as db:
                ended = db.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s", (f"shoal-ownership {owner_row.owner}",),
                ).fetchall()
            assert ended == [(True,)]
            cut_at = time.monotonic()

            async def closed() -> Any:
                current = store.get_run(run_id)
                return current if current is not None and current.state != "applying" else None

            done = await until("the takeover", closed, cut_at + TAKEOVER_DEADLINE)
            new_owner = store.cluster_owner("web")
            # Whichever server gets the lock first after the cut owns the cluster under a new
            # epoch: the second one, or the first one again on a new session; either way the
            # apply that began under the old epoch is fenced out.
            assert new_owner is not None and new_owner.epoch > owner_row.epoch
            assert any(f":{s.port}:" in new_owner.owner for s in (first_server, second))
            assert done.state == "interrupted" and done.fence == {"web": new_owner.epoch}
            assert [e.run_id for e in store.list_audit(action="run.taken_over")] == [run_id]

            # The first server ends its apply fenced out, writing nothing of the run.
            async def fenced() -> bool:
                return "fenced out" in first_server.log.read_text(errors="replace")

            await until("the first server's fenced-out stop", fenced, time.monotonic() + 60)
            after = store.get_run(run_id)
            assert after is not None and (after.state, after.fence) == (done.state, done.fence)
            assert after.recovery == done.recovery and after.finished_at == done.finished_at
        finally:
            for s in servers:
                await s.stop()
                await s.http.aclose()
            store.close()
