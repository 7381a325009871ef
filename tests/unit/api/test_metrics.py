"""`GET /metrics` over the real app and store: the Prometheus text parses, every series is
named as the format wants, and each counter says exactly what the records and requests were."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.signatures import sign
from reconciler.apply.events import ApplyEvent
from reconciler.apply.runresult import RollbackReport, RunResult
from reconciler.server.metrics import ServerMetrics
from reconciler.server.run_record import run_result_records
from reconciler.verify.result import VerificationResult
from tests.conftest import StoreMaker
from tests.support.api_world import SECRET, World, make_plan

BODY = b'{"ref": "refs/heads/main"}'


@pytest.fixture
def world(tmp_path: Path, app_stores: StoreMaker) -> Iterator[World]:
    world = World(tmp_path, app_stores)
    yield world
    world.controller.source.close()


def scrape(world: World) -> dict[str, float]:
    """`name{label="v",...}` -> value, for every sample."""
    response = world.client.get("/metrics", headers=world.auth("viewer"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        assert family.name.startswith("shoal_"), family.name
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _run(world: World, host: str, *, ok: bool, verified: bool | None, rolled_back: bool) -> None:
    plan = world.store.add_plan(make_plan(world.head, host), cluster="web", kind="change")
    run = world.store.approve_and_start_run(plan.id, actor="token:approver", comment="")
    assert run is not None
    rollbacks = [RollbackReport(host=host, phase="real_servers_prepare", by="phase",
                                reason="a step failed", proven=True)] if rolled_back else []
    verification = None if verified is None else VerificationResult(ok=verified)
    result = RunResult(plan_id=plan.id, revision=world.head, ok=ok, started_at=datetime.now(UTC),
                       verification=verification, rollbacks=rollbacks)  # fmt: skip
    rows, _, summary = run_result_records(result)
    world.store.add_step_results(run.id, rows, replace=True)
    world.store.finish_run(run.id, ok=ok, plan_state="applied" if ok else "failed",
                           run_state="applied" if ok else "failed", result=summary,
                           error=None if ok else "failed")  # fmt: skip


def test_metrics_need_a_token(world: World) -> None:
    assert world.client.get("/metrics").status_code == 401


def test_totals_come_from_the_records(world: World) -> None:
    before = scrape(world)
    assert before["shoal_runs_in_progress"] == 0
    assert before.get('shoal_runs_total{outcome="applied"}', 0) == 0
    _run(world, "web1", ok=True, verified=True, rolled_back=False)
    _run(world, "web2", ok=False, verified=False, rolled_back=True)
    _run(world, "web3", ok=False, verified=None, rolled_back=True)
    world.store.add_plan(make_plan(world.head, "lvs1"), cluster="web", kind="drift")
    after = scrape(world)
    assert after['shoal_runs_total{outcome="applied"}'] == 1
    assert after['shoal_runs_total{outcome="failed"}'] == 2
    assert after["shoal_verification_failures_total"] == 1
    assert after["shoal_drift_found_total"] == 1
    assert after['shoal_plans{state="applied"}'] == 1
    assert after['shoal_plans{state="failed"}'] == 2
    assert after['shoal_plans{state="pending"}'] == 1
    assert after["shoal_rollbacks_total"] == 2
    world.store.update_cluster("web", applied_revision=world.head, in_sync=True, drift=None)
    info = scrape(world)
    assert info[f'shoal_revision_info{{cluster="web",revision="{world.head}"}}'] == 1


def test_webhook_deliveries_are_counted_by_result(world: World) -> None:
    def post(headers: dict[str, str], body: bytes = BODY) -> int:
        return int(world.client.post("/webhooks/git", content=body, headers=headers).status_code)

    signed = {"x-hub-signature-256": sign(BODY, SECRET), "x-github-delivery": "d-1"}
    assert post({}) == 401
    assert post(signed) == 202
    assert post(signed) == 202  # the same delivery again
    other = b'{"ref": "refs/heads/other"}'
    assert post({"x-hub-signature-256": sign(other, SECRET)}, other) == 202
    got = scrape(world)
    assert got['shoal_webhook_deliveries_total{result="refused"}'] == 1
    assert got['shoal_webhook_deliveries_total{result="queued"}'] == 1
    assert got['shoal_webhook_deliveries_total{result="duplicate"}'] == 1
    assert got['shoal_webhook_deliveries_total{result="ignored"}'] == 1


def test_a_phase_lasts_from_its_event_to_the_next() -> None:
    metrics = ServerMetrics()
    timer = metrics.phase_timer()
    for kind, phase in (("start", None), ("phase", "packages"), ("step", "packages"),
                        ("phase", "real_servers_prepare"), ("verify", None), ("done", None)):
        timer(ApplyEvent(kind=kind, phase=phase))  # type: ignore[arg-type]
    text = metrics.render().decode()
    samples = {s.name + str(sorted(s.labels.items())): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip
    count = "shoal_apply_phase_duration_seconds_count"
    assert samples[count + "[('phase', 'packages')]"] == 1
    assert samples[count + "[('phase', 'real_servers_prepare')]"] == 1


def test_hosts_unreachable_sums_the_units_last_looks() -> None:
    metrics = ServerMetrics()
    metrics.hosts_unreachable("web", 2)
    metrics.hosts_unreachable("api", 1)
    metrics.hosts_unreachable("web", 0)
    assert b"shoal_hosts_unreachable 1.0" in metrics.render()
