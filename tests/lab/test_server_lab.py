"""The server end to end on real lab hosts: git pushes, signed webhooks, approvals, drift, crash.

Everything is real: a bare git repository receiving pushes, the FastAPI app (in process over
ASGI, and once as a `shoal serve` process under uvicorn), the SQLite store, SSH to the lab's
hosts. The module brings up its own labs (well under a second each) so that changing hosts by
hand never disturbs other modules sharing the session lab.

The tests of the in-process server run in order and share one repository and one lab: each
starts from the state the previous one left, as a real cluster's history would.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from lab import Lab, Topology
from lab.httpd import start_services, stop_services
from reconciler.server.controller import Controller
from reconciler.server.notify_settings import EVENTS, NotifySettings
from reconciler.server.notify_settings import Receiver as NotifyTarget
from reconciler.server.settings import ServerSettings
from reconciler.server.source import GitSource
from reconciler.server.store.database import Store
from reconciler.server.store.records import PlanRecord
from tests.lab.executor_support import WEB2_REDIRECT_AWAY
from tests.lab.server_support import SECRET, Repo, ServeProcess, set_in_file, sign, sysctl, web_toml
from tests.server.serve import git
from tests.support.notify_receiver import Receiver as NotifyReceiver

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_REPO = ROOT / "fixtures" / "config-repo"
NOTIFY_SECRET = b"lab-notify-secret"


async def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


# --- the in-process server ----------------------------------------------------------------------


class Server:
    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab = lab
        self.repo = Repo(tmp, lab)
        self.state = tmp / "state"
        self.store = Store.open(self.state)
        settings = ServerSettings(
            repo=str(self.repo.bare),
            state_dir=self.state,
            poll_interval=3600,
            client_key=lab.client_key_path,
            webhook_secret=SECRET,
        )
        # A real receiver of the server's notifications, on loopback.
        self.receiver = NotifyReceiver(NOTIFY_SECRET)
        self.controller = Controller(
            source=GitSource(str(self.repo.bare), self.state),
            store=self.store,
            client_key=lab.client_key_path,
            poll_interval=3600,  # only wakes start passes here
            notify=NotifySettings((NotifyTarget("chat", self.receiver.url, NOTIFY_SECRET,
                                                frozenset(EVENTS)),)),
            link_base="http://shoal",
        )
        self.app = create_app(self.controller, self.store, settings)
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://shoal", timeout=120
        )
        self.tokens = {r: self.store.create_token(r, r)[1] for r in ("viewer", "approver", "admin")}

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def webhook(self, body: bytes = b'{"ref":"refs/heads/main"}', **headers: str) -> int:
        response = await self.http.post("/webhooks/git", content=body, headers=headers)
        return response.status_code

    async def signed_webhook(self) -> int:
        body = b'{"ref":"refs/heads/main","after":"ignored"}'
        return await self.webhook(body, **{"X-Hub-Signature-256": sign(body)})

    def plans(self, **kw: Any) -> list[PlanRecord]:
        return self.store.list_plans(limit=1000, **kw)

    def pending(self, revision: str) -> list[PlanRecord]:
        return [p for p in self.plans(states=("pending",)) if p.revision == revision]

    async def metrics(self) -> dict[str, float]:
        """Every sample of GET /metrics, parsed with the Prometheus text parser."""
        response = await self.http.get("/metrics", headers=self.auth("viewer"))
        assert response.status_code == 200, response.text
        return {
            s.name + "".join(f"[{k}={v}]" for k, v in sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }

    async def settle(self) -> None:
        """Wait until the loop has no wake queued and no pass running."""
        await asyncio.sleep(0.1)
        await wait_for(
            lambda: not self.controller._wake.is_set()
            and self.controller.passes_completed == self.controller.passes,
            what="the loop to settle",
        )

    async def approve(self, plan_id: str) -> dict[str, Any]:
        response = await self.http.post(
            f"/plans/{plan_id}/approve", json={"comment": "lab"}, headers=self.auth("approver")
        )
        assert response.status_code == 202, response.text
        await self.controller.wait_idle()
        run: dict[str, Any] = (
            await self.http.get(f"/runs/{response.json()['run_id']}", headers=self.auth("viewer"))
        ).json()
        return run

    async def clusters(self) -> dict[str, Any]:
        response = await self.http.get("/clusters", headers=self.auth("viewer"))
        assert response.status_code == 200
        return {c["name"]: c for c in response.json()["clusters"]} | {
            "_repository": response.json()["repository"]
        }


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server(
    session_token: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    async with Lab.up(f"s{session_token}", Topology.default(), ephemeral=True) as lab:
        srv = Server(lab, tmp_path_factory.mktemp("server"))
        # The first commit has no cluster: the loop starts on a valid, empty repository.
        clusters = srv.repo.work / "clusters"
        saved = srv.repo.work.parent / "clusters-saved"
        shutil.move(clusters, saved)
        srv.repo.push(lambda _: None, "inventory only")
        shutil.move(saved, clusters)
        await srv.controller.start()
        await wait_for(lambda: srv.controller.passes_completed >= 1, what="the first pass")
        try:
            yield srv
        finally:
            await srv.controller.stop()
            await srv.http.aclose()
            srv.store.close()
            srv.receiver.close()


async def test_bad_or_missing_signature_queues_nothing(server: Server) -> None:
    sha = server.repo.push(lambda _: None, "add the web cluster")
    wakes, passes = server.controller.wake_requests, server.controller.passes
    body = b'{"ref":"refs/heads/main"}'
    assert await server.webhook(body) == 401
    assert await server.webhook(body, **{"X-Hub-Signature-256": sign(body + b"!")}) == 401
    assert await server.webhook(body, **{"X-Gitlab-Token": "wrong"}) == 401
    await asyncio.sleep(1.0)
    assert (server.controller.wake_requests, server.controller.passes) == (wakes, passes)
    assert server.plans() == []
    assert server.store.get_revision(sha) is None


async def test_signed_webhook_makes_a_pending_plan(server: Server) -> None:
    sha = git("rev-parse", "HEAD", cwd=server.repo.work)
    assert await server.signed_webhook() == 202
    (plan,) = await wait_for(lambda: server.pending(sha), what="a pending plan")
    assert plan.cluster == "web" and plan.kind == "change"
    listed = (
        await server.http.get("/plans?cluster=web&state=pending", headers=server.auth("viewer"))
    ).json()
    assert [p["id"] for p in listed] == [plan.id]
    shown = (await server.http.get(f"/plans/{plan.id}", headers=server.auth("viewer"))).json()
    assert shown["revision"] == sha
    assert set(shown["fact_digests"]) >= {"lvs1", "lvs2", "web1", "web2"}
    assert "arp_ignore" in shown["hosts"]["web1"]["diff"]


async def test_approval_needs_a_token_and_the_approver_role(server: Server) -> None:
    sha = git("rev-parse", "HEAD", cwd=server.repo.work)
    (plan,) = server.pending(sha)
    assert (await server.http.post(f"/plans/{plan.id}/approve")).status_code == 401
    viewer = await server.http.post(f"/plans/{plan.id}/approve", headers=server.auth("viewer"))
    assert viewer.status_code == 403
    assert server.pending(sha) == [plan]


async def test_approve_converges_the_hosts(server: Server) -> None:
    sha = git("rev-parse", "HEAD", cwd=server.repo.work)
    (plan,) = server.pending(sha)
    before = await server.metrics()
    run = await server.approve(plan.id)
    assert run["state"] == "applied" and run["ok"] is True, run
    after = await server.metrics()
    # The metrics moved by what happened: one applied run, one duration per phase of the plan
    # (the approval's own look at the hosts is a facts round trip), no rollback.
    moved = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
    phases = {s.phase.name.lower() for hp in plan.plan.hosts.values() for s in hp.steps}
    assert moved.get("shoal_runs_total[outcome=applied]") == 1, moved
    assert {k.split("[phase=")[1].rstrip("]") for k in moved
            if k.startswith("shoal_apply_phase_duration_seconds_count")} == phases, moved
    assert all(moved[f"shoal_apply_phase_duration_seconds_count[phase={p}]"] == 1 for p in phases)
    assert moved.get("shoal_facts_round_trip_duration_seconds_count", 0) >= 1, moved
    assert "shoal_rollbacks_total" not in moved and "shoal_verification_failures_total" not in moved
    assert after["shoal_runs_in_progress"] == 0
    assert before["shoal_webhook_deliveries_total[result=queued]"] >= 1
    planned = {s.id for hp in plan.plan.hosts.values() for s in hp.steps}
    assert {s["step_id"] for s in run["steps"]} == planned
    assert all(s["result"] == "applied" for s in run["steps"])
    assert run["backups"], "every phase's snapshot is indexed"
    lab = server.lab
    vip = re.sub(r"\.\d+$", ".100", lab.host("web1").address)
    for host in ("web1", "web2"):
        assert await sysctl(lab, host, "net.ipv4.conf.all.arp_ignore") == "1"
        lo = (await lab.exec(host, ["ip", "-4", "-o", "addr", "show", "dev", "lo"])).stdout
        assert f"{vip}/32" in lo
    await server.controller.reconcile_once()
    web = (await server.clusters())["web"]
    assert web["in_sync"] is True and web["applied_revision"] == sha and web["drift"] is None
    assert server.plans(states=("pending",)) == []


async def test_drift_is_reported(server: Server) -> None:
    await server.lab.exec("web1", ["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=0"])
    await server.controller.reconcile_once()
    web = (await server.clusters())["web"]
    assert web["drift"]["hosts"] == ["web1"] and web["in_sync"] is False
    audit = (await server.http.get("/audit?action=drift.detected", headers=server.auth("viewer")))
    assert audit.json()[0]["detail"]["hosts"] == ["web1"]
    (plan,) = server.plans(states=("pending",))
    assert plan.kind == "drift"
    # drift = "report": nothing is changed on the host.
    assert await sysctl(server.lab, "web1", "net.ipv4.conf.all.arp_ignore") == "0"


async def test_drift_heal_policy_heals(server: Server) -> None:
    sha = server.repo.push(
        lambda root: set_in_file(web_toml(root), r"^(arp_method = .*)$", '\\1\ndrift = "heal"'),
        "heal drift on web",
    )
    await server.controller.reconcile_once()
    (plan,) = server.pending(sha)  # a new revision: a change plan, approved by a person
    assert plan.kind == "change"
    assert [p.state for p in server.plans() if p.kind == "drift"] == ["superseded"]
    run = await server.approve(plan.id)
    assert run["ok"] is True
    assert await sysctl(server.lab, "web1", "net.ipv4.conf.all.arp_ignore") == "1"

    await server.lab.exec("web1", ["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=0"])
    await server.controller.reconcile_once()
    assert await sysctl(server.lab, "web1", "net.ipv4.conf.all.arp_ignore") == "1", (
        [(p.id, p.kind, p.state, p.revision[:8]) for p in server.plans()],
        [(a.action, a.actor, a.detail) for a in server.store.list_audit()][:8],
        [(r.state, r.error) for r in server.store.list_runs()],
    )
    healed = [p for p in server.plans() if p.kind == "drift" and p.state == "applied"]
    assert len(healed) == 1
    runs = server.store.list_runs(plan_id=healed[0].id)
    assert runs[0].actor == "policy:drift=heal" and runs[0].ok is True
    await server.controller.reconcile_once()
    web = (await server.clusters())["web"]
    assert web["in_sync"] is True and web["drift"] is None


async def test_hand_change_between_plan_and_approval_is_409(server: Server) -> None:
    sha = server.repo.push(
        lambda root: set_in_file(web_toml(root), r"weight = 2", "weight = 3"), "web2 weight 3"
    )
    await server.controller.reconcile_once()
    (plan,) = server.pending(sha)
    await server.lab.exec("web1", ["sysctl", "-qw", "net.ipv4.conf.all.arp_announce=0"])
    response = await server.http.post(
        f"/plans/{plan.id}/approve", headers=server.auth("approver")
    )
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["state"] == "stale" and body["hosts"] == ["web1"]
    stale = server.store.get_plan(plan.id)
    assert stale is not None and stale.state == "stale"
    (new,) = server.pending(sha)
    assert body["new_plan_id"] == new.id != plan.id
    run = await server.approve(new.id)
    assert run["ok"] is True
    assert await sysctl(server.lab, "web1", "net.ipv4.conf.all.arp_announce") == "2"


async def test_invalid_commit_keeps_the_last_good_plan(server: Server) -> None:
    good = server.repo.push(
        lambda root: set_in_file(web_toml(root), r"weight = 3", "weight = 4"), "web2 weight 4"
    )
    await server.controller.reconcile_once()
    (plan,) = server.pending(good)
    bad = server.repo.push(
        lambda root: set_in_file(web_toml(root), r'scheduler = "wlc"', 'scheduler = "fastest"'),
        "a typo",
    )
    assert await server.signed_webhook() == 202
    await wait_for(
        lambda: (c := server.store.get_cluster("web")) is not None and c.errors_revision == bad,
        what="the errors of the bad revision",
    )
    await server.settle()
    clusters = await server.clusters()
    web = clusters["web"]
    assert any("fastest" in e["message"] for e in web["errors"])
    assert web["last_plan"]["id"] == plan.id and web["last_plan"]["state"] == "pending"
    assert clusters["_repository"]["head"] == bad and clusters["_repository"]["head_valid"] is False
    assert [p for p in server.plans() if p.revision == bad] == []
    current = server.store.get_plan(plan.id)
    assert current is not None and current.state == "pending"


async def test_fifty_concurrent_webhooks_make_one_plan(server: Server) -> None:
    sha = server.repo.push(
        lambda root: set_in_file(web_toml(root), r'scheduler = "fastest"', 'scheduler = "wlc"'),
        "fix the typo",
    )
    passes = server.controller.passes
    statuses = await asyncio.gather(*(server.signed_webhook() for _ in range(50)))
    assert statuses == [202] * 50
    await wait_for(lambda: server.pending(sha), what="the plan")
    await server.settle()
    assert len([p for p in server.plans() if p.revision == sha]) == 1
    # Coalesced: one pass, or two when the first began while webhooks were still arriving.
    assert 1 <= server.controller.passes - passes <= 2
    web = (await server.clusters())["web"]
    assert web["errors"] == []


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The samples that changed, by how much (a sample that appeared counts from 0)."""
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}




async def test_metrics_and_notifications_follow_a_verified_run_and_a_rollback(
    server: Server,
) -> None:
    # Cost: two applies with verification and one rollback, about 20 s on a loaded machine.
    lab = server.lab
    vip = re.sub(r"\.\d+$", ".100", lab.host("web1").address)
    await start_services(lab, [80], hosts=["web1", "web2"])
    seen = len(server.receiver.got)
    try:
        def verify_on(root: Path) -> None:
            settings = root / "shoal.toml"
            # requests_per_server stays 10: the lightest of weights 1 and 4 expects 10 of 50.
            settings.write_text(settings.read_text().replace("enabled = false", "enabled = true"))

        await server.settle()
        before = await server.metrics()
        sha = server.repo.push(verify_on, "verify every apply with real traffic")
        await server.controller.reconcile_once()
        (plan,) = server.pending(sha)
        run = await server.approve(plan.id)
        assert run["state"] == "applied" and run["verification"]["ok"] is True, run
        applied = await server.metrics()
        delta = moved(before, applied)
        phases = {s.phase.name.lower() for hp in plan.plan.hosts.values() for s in hp.steps}
        assert delta.pop("shoal_runs_total[outcome=applied]") == 1, delta
        for p in phases:
            assert delta.pop(f"shoal_apply_phase_duration_seconds_count[phase={p}]") == 1, delta
            delta.pop(f"shoal_apply_phase_duration_seconds_sum[phase={p}]")
        # One pass (this test's) and one approval: each looked at the hosts once.
        assert delta.pop("shoal_reconcile_passes_total[result=ok]") == 1, delta
        assert delta.pop("shoal_reconcile_pass_duration_seconds_count") == 1, delta
        assert delta.pop("shoal_facts_round_trip_duration_seconds_count") == 2, delta
        assert delta.pop(f"shoal_revision_info[cluster=web][revision={sha}]") == 1, delta
        assert all(v == -1 for k, v in delta.items() if k.startswith("shoal_revision_info")), delta
        assert delta.get("shoal_plans[state=applied]") == 1, delta
        for k in [k for k in delta if k.startswith(("shoal_plans[", "shoal_revision_info")) or
                  k.endswith("_sum") or "_bucket[" in k or "_sum[" in k or "_created" in k]:
            delta.pop(k)  # fmt: skip
        assert {k: v for k, v in delta.items() if not k.startswith("shoal_notification")} == {}
        assert "shoal_rollbacks_total" not in delta
        assert applied["shoal_runs_in_progress"] == 0

        def redirect_away(root: Path) -> None:
            web_toml(root).write_text(web_toml(root).read_text()
                                      + WEB2_REDIRECT_AWAY.format(vip=vip))  # fmt: skip

        sha2 = server.repo.push(redirect_away, "web2's port 80 elsewhere")
        await server.controller.reconcile_once()
        (bad,) = server.pending(sha2)
        run2 = await server.approve(bad.id)
        assert run2["state"] == "failed" and run2["verification"]["ok"] is False, run2
        assert run2["rollbacks"] and all(r["result"] == "proven" for r in run2["rollbacks"]), run2
        rolled = await server.metrics()
        delta = moved(applied, rolled)
        assert delta.pop("shoal_runs_total[outcome=failed]") == 1, delta
        assert delta.pop("shoal_rollbacks_total") == 1, delta
        assert delta.pop("shoal_verification_failures_total") == 1, delta
        assert delta.pop("shoal_reconcile_passes_total[result=ok]") == 1, delta
        assert delta.pop("shoal_facts_round_trip_duration_seconds_count") == 2, delta
        # The revision in force is still the verified one.
        assert not any(k.startswith("shoal_revision_info") for k in delta), delta
        assert rolled[f"shoal_revision_info[cluster=web][revision={sha}]"] == 1
        assert "shoal_runs_total[outcome=applied]" not in delta

        # The receiver got each of these events once, signed, in order.
        def events() -> list[tuple[str, str | None]]:
            return [(r.payload["event"], r.payload["run_id"])
                    for r in server.receiver.got[seen:]]  # fmt: skip

        want = [("plan_pending", None), ("plan_approved", run["id"]), ("applied", run["id"]),
                ("verified", run["id"]), ("plan_pending", None), ("plan_approved", run2["id"]),
                ("rolled_back", run2["id"])]  # fmt: skip
        await wait_for(lambda: len(events()) >= len(want), what="the notifications")
        assert events() == want
        assert all(r.signed_ok for r in server.receiver.got[seen:])
        final = await server.metrics()
        assert final["shoal_notifications_total[receiver=chat][result=delivered]"] == len(
            server.receiver.got)
    finally:
        await stop_services(lab, hosts=["web1", "web2"])
        await lab.exec("client1", ["ip", "neigh", "del", vip, "dev", "eth0"], check=False)


# --- a real `shoal serve` process, killed while applying ---------------------------------------


TWO_CLUSTERS_WEB = """
[cluster]
name = "web"
directors = ["lvs1"]
director = "nftables"
arp_method = "sysctl"

[[service]]
name = "http"
vip = "{vip_web}"
port = 80

  [[service.real_server]]
  host = "web1"

  [[service.real_server]]
  host = "web2"
  weight = 2
"""

TWO_CLUSTERS_EDGE = """
[cluster]
name = "edge"
directors = ["lvs2"]
director = "nftables"
arp_method = "sysctl"

[[service]]
name = "http"
vip = "{vip_edge}"
port = 80

  [[service.real_server]]
  host = "web3"
"""


async def test_serve_killed_while_applying_recovers(
    session_token: str, tmp_path: Path
) -> None:
    async with Lab.up(f"k{session_token}", Topology.default(), ephemeral=True) as lab:
        repo = Repo(tmp_path, lab)
        prefix = lab.host("web1").address.rsplit(".", 1)[0]

        def two_clusters(root: Path) -> None:
            (root / "clusters" / "web.toml").write_text(
                TWO_CLUSTERS_WEB.format(vip_web=f"{prefix}.100")
            )
            (root / "clusters" / "edge.toml").write_text(
                TWO_CLUSTERS_EDGE.format(vip_edge=f"{prefix}.101")
            )

        sha = repo.push(two_clusters, "two clusters")
        serve = ServeProcess(lab, tmp_path, repo.bare)
        try:
            await serve.start()

            async def pending() -> dict[str, dict[str, Any]]:
                plans = await serve.get("/plans?state=pending")
                return {p["clusters"][0]: p for p in plans if p["revision"] == sha}

            deadline = time.monotonic() + 60
            plans = await pending()
            while len(plans) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                plans = await pending()
            assert set(plans) == {"web", "edge"}, plans
            web_plan = await serve.get(f"/plans/{plans['web']['id']}")

            response = await serve.http.post(
                f"/plans/{web_plan['id']}/approve", headers=serve.auth("approver")
            )
            assert response.status_code == 202, response.text
            run_id = response.json()["run_id"]
            # Kill as soon as the first host has its snapshot: the apply is under way.
            backup = f"/var/lib/shoal/backups/{web_plan['id']}"
            first = sorted(h for h, hp in web_plan["hosts"].items() if hp["steps"])
            while True:
                probes = await asyncio.gather(
                    *(lab.exec(h, ["test", "-d", backup], check=False) for h in first)
                )
                if any(p.returncode == 0 for p in probes):
                    break
                run = await serve.get(f"/runs/{run_id}")
                assert run["state"] == "applying", "the apply ended before it could be killed"
                await asyncio.sleep(0.01)
            serve.kill()

            await serve.start()
            run = await serve.get(f"/runs/{run_id}")
            assert run["state"] == "interrupted", run
            recovery = run["recovery"]
            assert "error" not in recovery, recovery
            if recovery["outcome"] != "converged":
                assert recovery["outcome"] == "rolled_back", recovery
                assert recovery["hosts_at_pre_apply_state"] == sorted(web_plan["hosts"])
                for host, digest in web_plan["fact_digests"].items():
                    facts = await serve.get(f"/hosts/{host}/facts")
                    assert facts["digest"] == digest, host
            assert (await serve.get(f"/plans/{web_plan['id']}"))["state"] == "interrupted"
            edge = await serve.get(f"/plans/{plans['edge']['id']}")
            assert edge["state"] == "pending"
            audit = await serve.get("/audit?action=run.interrupted")
            assert audit and audit[0]["run_id"] == run_id
            # Both processes' logs are JSON lines; the run is followed by its id through the
            # apply, the kill and the recovery, each line naming its plan and cluster too.
            lines = [json.loads(line) for line in serve.log.read_text().splitlines() if line]
            of_run = [line for line in lines if line.get("run_id") == run_id]
            assert {"applying", "recovering interrupted run"} <= {x["msg"] for x in of_run}, (
                of_run)
            assert all((x["plan_id"], x["clusters"]) == (web_plan["id"], "web") for x in of_run)
        finally:
            await serve.stop()
            await serve.http.aclose()
