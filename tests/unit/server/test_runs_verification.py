"""GET /runs/{id} shows the verification phase that ended a run (distribution, failures).

The run goes the way the controller stores it: an executor RunResult with its
VerificationResult, turned into store rows by `run_result_records`, then read back over HTTP.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from reconciler.apply.runresult import RunError, RunResult
from reconciler.server.run_record import run_result_records
from reconciler.verify.result import (
    ArpCheck,
    ArpResponder,
    RealServerTraffic,
    ServiceTraffic,
    VerificationFailure,
    VerificationResult,
)
from tests.conftest import StoreMaker
from tests.support.api_world import World, make_plan


def _verification(ok: bool) -> VerificationResult:
    traffic = ServiceTraffic(
        cluster="web", service="http", vip="10.77.0.100", port=80, protocol="tcp",
        client="client1", director="lvs1", requests=60, ok=60, failed=0, rounds=1,
        real_servers=(
            RealServerTraffic(host="web1", weight=1, received=10, answered=10, via_director=0),
            RealServerTraffic(host="web2", weight=2, received=21, answered=21, via_director=0),
            RealServerTraffic(host="web3", weight=3, received=29, answered=29, via_director=0),
        ),
        forward_packets=360, return_packets=0,
    )  # fmt: skip
    arp = ArpCheck(
        client="client1", vip="10.77.0.100", director="lvs1", expected_mac="02:00:00:00:00:0b",
        responders=(ArpResponder(mac="02:00:00:00:00:0b", host="lvs1"),)
        + (() if ok else (ArpResponder(mac="02:00:00:00:00:16", host="web2"),)),
        neighbour_mac="02:00:00:00:00:0b", neighbour_host="lvs1",
    )  # fmt: skip
    failures = () if ok else (
        VerificationFailure(check="arp", host="web2", message="web2 answers ARP for 10.77.0.100"),
    )  # fmt: skip
    return VerificationResult(
        ok=ok, clients=("client1",), services=(traffic,), arp=(arp,), failures=failures,
        elapsed=3.2,
    )  # fmt: skip


def _stored_run(world: World, result: RunResult) -> str:
    plan = make_plan(world.head)
    world.store.add_plan(plan, cluster="web", kind="change")
    run = world.store.approve_and_start_run(plan.id, actor="token:approver", comment="")
    assert run is not None
    rows, _, summary = run_result_records(result.model_copy(update={"plan_id": plan.id}))
    world.store.add_step_results(run.id, rows)
    world.store.finish_run(
        run.id,
        ok=result.ok,
        plan_state="applied" if result.ok else "failed",
        run_state="applied" if result.ok else "failed",
        result=summary,
        error=summary.get("error"),
    )
    return run.id


def test_run_shows_its_verification_and_distribution(
    tmp_path: Path, app_stores: StoreMaker
) -> None:
    world = World(tmp_path, app_stores)
    result = RunResult(
        plan_id="-", revision=world.head, ok=True, started_at=datetime.now(UTC),
        verification=_verification(ok=True), comment="31 steps applied",
    )  # fmt: skip
    run_id = _stored_run(world, result)
    body = world.client.get(f"/runs/{run_id}", headers=world.auth("viewer")).json()
    v = body["verification"]
    assert v["ok"] is True and v["failures"] == [] and v["clients"] == ["client1"]
    assert v["distribution"] == {
        "10.77.0.100:80/tcp (client1)": {"web1": 10, "web2": 21, "web3": 29}
    }
    # The full result keeps every detail (per real server, ARP responders).
    services = body["result"]["verification"]["services"]
    assert [rs["weight"] for rs in services[0]["real_servers"]] == [1, 2, 3]


def test_failed_verification_names_check_and_host(tmp_path: Path, app_stores: StoreMaker) -> None:
    world = World(tmp_path, app_stores)
    result = RunResult(
        plan_id="-", revision=world.head, ok=False, started_at=datetime.now(UTC),
        verification=_verification(ok=False),
        errors=[RunError(kind="VerificationError", host="web2", phase="verify",
                         step_id="verify/arp",
                         message="arp check failed: web2 answers ARP for 10.77.0.100")],
        comment="verification failed (arp check, host web2): web2 answers ARP for 10.77.0.100",
    )  # fmt: skip
    run_id = _stored_run(world, result)
    body = world.client.get(f"/runs/{run_id}", headers=world.auth("viewer")).json()
    assert body["state"] == "failed" and body["ok"] is False
    assert body["error"] == "web2: arp check failed: web2 answers ARP for 10.77.0.100"
    assert body["verification"]["failures"] == [
        {"check": "arp", "host": "web2", "message": "web2 answers ARP for 10.77.0.100"}
    ]


def test_run_without_verification_shows_none(tmp_path: Path, app_stores: StoreMaker) -> None:
    world = World(tmp_path, app_stores)
    plain = RunResult(plan_id="-", revision=world.head, ok=True, started_at=datetime.now(UTC))
    run_id = _stored_run(world, plain)
    body = world.client.get(f"/runs/{run_id}", headers=world.auth("viewer")).json()
    assert body["state"] == "applied" and body["verification"] is None
