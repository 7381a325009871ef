"""The HTTP API with the real app, store, controller and a real git repo; no hosts contacted.

Approving needs hosts (facts are gathered again), so it is covered in tests/lab; here: auth,
listing, showing, rejecting, runs, facts, audit, webhooks and the lifespan.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from reconciler.server.store.records import StepResultRecord
from tests.conftest import StoreMaker
from tests.support.api_world import SECRET, World, make_plan


@pytest.fixture
def world(tmp_path: Path, app_stores: StoreMaker) -> World:
    return World(tmp_path, app_stores)


def test_health_and_openapi(world: World) -> None:
    assert world.client.get("/healthz").json() == {"status": "ok"}
    ready = world.client.get("/readyz")
    assert ready.status_code == 503  # the loop is not running outside the lifespan
    assert ready.json()["checks"] == {"store": True, "controller": False}
    spec = world.client.get("/openapi.json").json()
    for path in ("/plans/{plan_id}/approve", "/webhooks/git", "/runs/{run_id}", "/audit"):
        assert path in spec["paths"]


@pytest.mark.parametrize(
    ("method", "path", "role", "status"),
    [
        ("GET", "/clusters", None, 401),
        ("GET", "/clusters", "bogus", 401),
        ("GET", "/clusters", "viewer", 200),
        ("GET", "/plans", None, 401),
        ("GET", "/audit", None, 401),
        ("POST", "/plans/0123456789abcdef/approve", None, 401),
        ("POST", "/plans/0123456789abcdef/approve", "viewer", 403),
        ("POST", "/plans/0123456789abcdef/reject", "viewer", 403),
        ("POST", "/plans/0123456789abcdef/approve", "approver", 404),
        ("POST", "/plans/not-a-plan-id/approve", "approver", 422),
        ("GET", "/runs/0123456789abcdef", "viewer", 404),
        ("GET", "/runs/nope", "viewer", 422),
        ("GET", "/audit?after_id=9223372036854775807", "viewer", 200),
        ("GET", "/audit?after_id=9223372036854775808", "viewer", 422),
        ("GET", "/plans?state=s", "viewer", 422),
        ("POST", "/reconcile", "approver", 403),
        ("POST", "/reconcile", "admin", 202),
    ],
)
def test_roles(world: World, method: str, path: str, role: str | None, status: int) -> None:
    headers = {}
    if role == "bogus":
        headers = {"Authorization": "Bearer shoal_000000000000_nope"}
    elif role is not None:
        headers = world.auth(role)
    response = world.client.request(method, path, headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def test_plans_list_show_reject(world: World) -> None:
    plan = make_plan(world.head)
    world.store.add_plan(plan, cluster="web", kind="change")
    listed = world.client.get("/plans?cluster=web&state=pending", headers=world.auth("viewer"))
    assert [p["id"] for p in listed.json()] == [plan.id]
    assert world.client.get("/plans?state=applied", headers=world.auth("viewer")).json() == []
    assert world.client.get("/plans?state=nope", headers=world.auth("viewer")).status_code == 422

    shown = world.client.get(f"/plans/{plan.id}", headers=world.auth("viewer")).json()
    assert shown["revision"] == world.head
    assert shown["fact_digests"] == {"web1": "f" * 64}
    web1 = shown["hosts"]["web1"]
    assert web1["steps"][0]["commands"] == ["ip addr add 10.77.0.100/32 dev lo"]
    assert web1["steps"][0]["phase"] == "REAL_SERVERS_PREPARE"
    assert "+10.77.0.100/32 dev lo" in web1["diff"]

    # A viewer cannot reject; an approver can, once.
    path = f"/plans/{plan.id}/reject"
    assert world.client.post(path, headers=world.auth("viewer")).status_code == 403
    rejected = world.client.post(
        path, json={"comment": "not today"}, headers=world.auth("approver")
    )
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
    again = world.client.post(path, headers=world.auth("approver"))
    assert again.status_code == 409 and again.json()["state"] == "rejected"
    # Approving a rejected plan is refused before any host is contacted.
    approve = world.client.post(f"/plans/{plan.id}/approve", headers=world.auth("admin"))
    assert approve.status_code == 409

    shown = world.client.get(f"/plans/{plan.id}", headers=world.auth("viewer")).json()
    assert shown["approvals"][0]["decision"] == "reject"
    assert shown["approvals"][0]["actor"] == "token:approver"
    audit = world.client.get("/audit?action=plan.rejected", headers=world.auth("viewer")).json()
    assert audit[0]["detail"] == {"comment": "not today"} and audit[0]["plan_id"] == plan.id


def test_run_and_facts(world: World) -> None:
    plan = make_plan(world.head)
    world.store.add_plan(plan, cluster="web", kind="change")
    run = world.store.approve_and_start_run(plan.id, actor="token:approver", comment="")
    assert run is not None
    world.store.add_step_results(
        run.id,
        [
            StepResultRecord(0, "web1", "web1/vip/add", "add the VIP", "failed", comment="exit 2"),
            StepResultRecord(1, "web1", "web1/vip/add", "restore addr", "ok", rollback=True),
        ],
    )
    world.store.finish_run(
        run.id, ok=False, plan_state="failed", run_state="failed", result={"x": 1}, error="e"
    )
    body = world.client.get(f"/runs/{run.id}", headers=world.auth("viewer")).json()
    assert body["state"] == "failed" and body["plan_id"] == plan.id
    assert [s["result"] for s in body["steps"]] == ["failed"]
    assert [s["name"] for s in body["rollbacks"]] == ["restore addr"]
    assert world.client.get("/runs/" + "0" * 16, headers=world.auth("viewer")).status_code == 404

    assert world.client.get("/hosts/web1/facts", headers=world.auth("viewer")).status_code == 404
    world.store.put_host_facts("web1", "d" * 64, {"hostname": {"value": "web1"}})
    facts = world.client.get("/hosts/web1/facts", headers=world.auth("viewer")).json()
    assert facts["digest"] == "d" * 64 and facts["facts"]["hostname"]["value"] == "web1"


def sig(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def test_webhooks(world: World) -> None:
    body = b'{"ref":"refs/heads/main"}'
    c = world.controller
    ok = world.client.post(
        "/webhooks/git",
        content=body,
        headers={"X-Hub-Signature-256": sig(body), "X-GitHub-Event": "push"},
    )
    assert ok.status_code == 202
    assert ok.json() == {
        "queued": True,
        "scheme": "github",
        "outcome": "queued",
        "delivery": None,
        "reason": "",
    }
    assert c.wake_requests == 1
    bad = world.client.post(
        "/webhooks/git", content=body, headers={"X-Hub-Signature-256": sig(body + b"x")}
    )
    missing = world.client.post("/webhooks/git", content=body)
    assert (bad.status_code, missing.status_code) == (401, 401)
    assert c.wake_requests == 1  # nothing queued
    gitlab = world.client.post("/webhooks/git", content=body, headers={"X-Gitlab-Token": SECRET})
    generic = world.client.post(
        "/webhooks/git", content=body, headers={"X-Shoal-Signature": sig(body)}
    )
    assert (gitlab.status_code, generic.status_code) == (202, 202)
    assert c.wake_requests == 3

    big = b"x" * 5000
    too_big = world.client.post(
        "/webhooks/git", content=big, headers={"X-Shoal-Signature": sig(big)}
    )
    assert too_big.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the stream itself is bounded
        for _ in range(10):
            yield b"y" * 1000

    streamed = world.client.post("/webhooks/git", content=chunks())
    assert streamed.status_code == 413
    assert c.wake_requests == 3


def test_lifespan_runs_the_loop_and_records_invalid_revision(world: World) -> None:
    world.store.update_cluster("web")  # a cluster known from an earlier, valid revision
    with TestClient(world.app) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = client.get("/readyz").status_code == 200
            if ready and world.controller.passes_completed >= 1:
                break
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200
        body = client.get("/clusters", headers=world.auth("viewer")).json()
    repo = body["repository"]
    assert repo["head"] == world.head and repo["head_valid"] is False
    assert any("scheduler" in e["message"] for e in repo["head_errors"])
    (web,) = body["clusters"]
    assert web["errors_revision"] == world.head and web["errors"]
    assert web["last_plan"] is None
    assert world.store.list_plans() == []
    actions = [a.action for a in world.store.list_audit()]
    assert "revision.invalid" in actions
    assert world.controller.ready is False  # stopped by the lifespan


def test_validation_errors_are_fastapi_422_bodies(world: World) -> None:
    # The shape the OpenAPI promises for 422 (HTTPValidationError): detail is a list of objects
    # each naming the parameter it is about.
    for query in ("state=s", "after_id=9223372036854775808", "cluster=a%20b", "action=DROP"):
        response = world.client.get(f"/plans?{query}", headers=world.auth("viewer"))
        if query.startswith(("after_id", "action")):
            response = world.client.get(f"/audit?{query}", headers=world.auth("viewer"))
        assert response.status_code == 422, (query, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, list) and detail, detail
        assert detail[0]["loc"] == ["query", query.split("=")[0]]


def test_openapi_documents_every_auth_answer(world: World) -> None:
    spec = world.client.get("/openapi.json").json()
    needs = {
        ("get", "/clusters"): {"401"},
        ("get", "/audit"): {"401", "422"},
        ("get", "/plans"): {"401", "422"},
        ("get", "/plans/{plan_id}"): {"401", "404", "422"},
        ("get", "/runs/{run_id}"): {"401", "404", "422"},
        ("get", "/hosts/{name}/facts"): {"401", "404", "422"},
        ("post", "/plans/{plan_id}/approve"): {"400", "401", "403", "404", "409", "422", "503"},
        ("post", "/plans/{plan_id}/reject"): {"400", "401", "403", "404", "409", "422"},
        ("post", "/reconcile"): {"401", "403"},
        ("post", "/webhooks/git"): {"400", "401", "413"},
    }
    for (method, path), statuses in needs.items():
        documented = set(spec["paths"][path][method]["responses"])
        assert statuses <= documented, (method, path, statuses - documented)
    state = next(p for p in spec["paths"]["/plans"]["get"]["parameters"] if p["name"] == "state")
    assert "pending" in json.dumps(state["schema"]) and "enum" in json.dumps(state["schema"])
