"""The web pages over the real app and store (FastAPI's TestClient): sign-in, sessions and
their expiry, CSRF and role refusals, escaping, and what each page shows.

The controller is real but never started and reaches no host: the plans and runs the pages
show are stored the way the controller stores them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from reconciler.apply.runresult import RunResult
from reconciler.server.run_record import run_result_records
from reconciler.server.store.records import PlanRecord
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
from tests.support.web import csrf_of, fetched_urls, inline_code, sign_in


@pytest.fixture
def world(tmp_path: Path, app_stores: StoreMaker) -> Iterator[World]:
    world = World(tmp_path, app_stores)
    yield world
    # The pages read commit subjects from the mirror: its git helper processes end here.
    world.controller.source.close()


def _pending(world: World, host: str = "web1") -> PlanRecord:
    return world.store.add_plan(make_plan(world.head, host), cluster="web", kind="change")


def _signed_in(world: World, role: str) -> TestClient:
    client = TestClient(world.app)
    assert sign_in(client, world.tokens[role]).status_code == 303
    return client


def test_a_page_without_a_session_goes_to_sign_in_and_comes_back(world: World) -> None:
    plan = _pending(world)
    first = world.client.get(f"/ui/plans/{plan.id}", follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"] == f"/ui/sign-in?next=/ui/plans/{plan.id}"
    signed = sign_in(world.client, world.tokens["viewer"], f"/ui/plans/{plan.id}")
    assert signed.headers["location"] == f"/ui/plans/{plan.id}"
    assert world.client.get(f"/ui/plans/{plan.id}").status_code == 200


def test_the_session_cookie_is_httponly_strict_and_secure_behind_tls(world: World) -> None:
    plain = sign_in(world.client, world.tokens["viewer"]).headers["set-cookie"]
    assert "shoal_session=" in plain and "HttpOnly" in plain and "SameSite=strict" in plain
    assert "Secure" not in plain.split("shoal_sign_in")[0]
    tls = TestClient(world.app, base_url="https://shoal.example.invalid")
    secure = sign_in(tls, world.tokens["viewer"]).headers["set-cookie"]
    assert "shoal_session=" in secure and "Secure" in secure.split("shoal_sign_in")[0]
    # The token is exchanged, never kept: the cookie holds a random secret, the store its hash.
    assert world.tokens["viewer"] not in plain


def test_a_wrong_token_or_a_forged_sign_in_form_is_refused(world: World) -> None:
    assert sign_in(world.client, "shoal_000000000000_nope").status_code == 401
    forged = TestClient(world.app).post(
        "/ui/sign-in", data={"token": world.tokens["admin"], "nonce": "x", "next": "/ui/"}
    )
    assert forged.status_code == 403 and "shoal_session" not in forged.headers.get("set-cookie", "")
    assert world.client.get("/ui/", follow_redirects=False).status_code == 303


def test_a_post_without_the_csrf_token_is_403_and_decides_nothing(world: World) -> None:
    plan = _pending(world)
    client = _signed_in(world, "approver")
    for path in (f"/ui/plans/{plan.id}/approve", f"/ui/plans/{plan.id}/reject"):
        assert client.post(path, data={"comment": "no token"}).status_code == 403
        assert client.post(path, data={"csrf": "wrong", "comment": "x"}).status_code == 403
    assert client.post("/ui/sign-out", data={}).status_code == 403
    assert world.store.get_plan(plan.id).state == "pending"  # type: ignore[union-attr]
    assert world.store.approvals_for(plan.id) == []


def test_a_viewer_sees_no_approve_button_and_a_forged_post_is_403(world: World) -> None:
    plan = _pending(world)
    viewer = _signed_in(world, "viewer")
    page = viewer.get(f"/ui/plans/{plan.id}")
    assert page.status_code == 200
    assert 'id="approve"' not in page.text and 'id="read-only"' in page.text
    assert "Reconcile now" not in viewer.get("/ui/").text
    csrf = csrf_of(page.text)  # the viewer's own, valid token: the role still decides
    for path in (f"/ui/plans/{plan.id}/approve", f"/ui/plans/{plan.id}/reject", "/ui/reconcile"):
        forged = viewer.post(path, data={"csrf": csrf, "comment": "forged"})
        assert forged.status_code == 403, path
        assert "viewer" in forged.text
    assert world.store.get_plan(plan.id).state == "pending"  # type: ignore[union-attr]
    assert world.controller.wake_requests == 0


def test_roles_get_their_buttons(world: World) -> None:
    plan = _pending(world)
    approver = _signed_in(world, "approver")
    page = approver.get(f"/ui/plans/{plan.id}").text
    assert 'id="approve"' in page and 'id="reject"' in page
    assert "Reconcile now" not in approver.get("/ui/").text
    admin = _signed_in(world, "admin")
    overview = admin.get("/ui/").text
    assert "Reconcile now" in overview
    queued = admin.post("/ui/reconcile", data={"csrf": csrf_of(overview)}, follow_redirects=False)
    assert queued.status_code == 303 and world.controller.wake_requests == 1
    assert world.store.list_audit(action="reconcile.requested")[0].actor == "token:admin"


def test_reject_with_a_comment_lands_in_the_audit_log_escaped(world: World) -> None:
    plan = _pending(world)
    client = _signed_in(world, "approver")
    page = client.get(f"/ui/plans/{plan.id}").text
    comment = "<script>alert(1)</script> not now"
    done = client.post(
        f"/ui/plans/{plan.id}/reject", data={"csrf": csrf_of(page), "comment": comment}
    )
    assert done.status_code == 200 and "rejected" in done.text
    (entry,) = world.store.list_audit(action="plan.rejected")
    assert entry.actor == "token:approver" and entry.detail["comment"] == comment
    for html in (done.text, client.get("/ui/audit?action=plan.rejected").text):
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt; not now" in html


def test_sign_out_ends_the_session_for_good(world: World) -> None:
    client = _signed_in(world, "viewer")
    cookie = client.cookies["shoal_session"]
    out = client.post(
        "/ui/sign-out", data={"csrf": csrf_of(client.get("/ui/").text)}, follow_redirects=False
    )
    assert out.status_code == 303 and out.headers["location"] == "/ui/sign-in?signed_out=1"
    replay = TestClient(world.app, cookies={"shoal_session": cookie})
    assert replay.get("/ui/", follow_redirects=False).status_code == 303
    assert [a.action for a in world.store.list_audit(actor="token:viewer")] == [
        "session.closed",
        "session.opened",
    ]


def test_a_session_expires(world: World) -> None:
    world.app.state.settings = dataclasses.replace(world.settings, session_lifetime=2.0)
    signed_at = time.monotonic()
    client = _signed_in(world, "viewer")
    first = client.get("/ui/", follow_redirects=False).status_code
    if time.monotonic() - signed_at < 1.5:  # a busy machine may take longer than the session
        assert first == 200
    deadline = time.monotonic() + 20
    while (answer := client.get("/ui/", follow_redirects=False)).status_code == 200:
        assert time.monotonic() < deadline, "the session never expired"
        time.sleep(0.1)
    assert answer.status_code == 303 and "expired=1" in answer.headers["location"]
    # ...and an expired session is no session for a form either.
    assert client.post("/ui/reconcile", data={"csrf": "x"}).status_code == 403


def test_the_store_ends_sessions_at_expiry_and_with_their_token(world: World) -> None:
    token = world.store.authenticate(world.tokens["approver"])
    assert token is not None
    now = datetime.now(UTC)
    _, secret = world.store.open_session(token, timedelta(hours=1), now=now)
    assert world.store.session_of(secret, now=now + timedelta(minutes=59)) is not None
    assert world.store.session_of(secret, now=now + timedelta(hours=1)) is None
    world.store.revoke_token(token.id)
    assert world.store.session_of(secret, now=now) is None


def test_no_page_fetches_anything_from_outside(world: World) -> None:
    plan = _pending(world)
    client = _signed_in(world, "admin")
    for path in ("/ui/", f"/ui/plans/{plan.id}", "/ui/audit", "/ui/clusters/web", "/ui/sign-in"):
        page = client.get(path)
        if path == "/ui/clusters/web":
            assert page.status_code == 404  # no pass has recorded the cluster
            continue
        assert page.status_code == 200, path
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        outside = [u for u in fetched_urls(page.text) if not u.startswith(("/", "#"))]
        assert outside == [], (path, outside)
        assert inline_code(page.text) == [], path
        assert "<script>" not in page.text  # only <script src="/ui/static/...">


def _run_with_verification(world: World, ok: bool, vip: str = "10.77.0.100") -> str:
    traffic = ServiceTraffic(
        cluster="web", service="http", vip=vip, port=80, protocol="tcp",
        client="client1", director="lvs1", requests=30, ok=30, failed=0, rounds=1,
        real_servers=(
            RealServerTraffic(host="web1", weight=1, received=11, answered=11, via_director=0),
            RealServerTraffic(host="web2", weight=2, received=19, answered=19, via_director=0),
        ),
        forward_packets=90, return_packets=0,
    )  # fmt: skip
    responders: tuple[ArpResponder, ...] = (ArpResponder(mac="02:00:00:00:00:0b", host="lvs1"),)
    if not ok:
        responders += (ArpResponder(mac="02:00:00:00:00:16", host="web2"),)
    arp = ArpCheck(
        client="client1", vip="10.77.0.100", director="lvs1", expected_mac="02:00:00:00:00:0b",
        responders=responders, neighbour_mac="02:00:00:00:00:0b", neighbour_host="lvs1",
    )  # fmt: skip
    failures = () if ok else (
        VerificationFailure(check="arp", host="web2", message="web2 answers ARP for 10.77.0.100"),
    )  # fmt: skip
    verification = VerificationResult(
        ok=ok, clients=("client1",), services=(traffic,), arp=(arp,), failures=failures
    )
    plan = _pending(world)
    run = world.store.approve_and_start_run(plan.id, actor="token:approver", comment="go")
    assert run is not None
    result = RunResult(
        plan_id=plan.id, revision=world.head, ok=ok, started_at=datetime.now(UTC),
        verification=verification, comment="applied",
    )  # fmt: skip
    rows, _, summary = run_result_records(result)
    world.store.add_step_results(run.id, rows, replace=True)
    world.store.finish_run(
        run.id, ok=ok, plan_state="applied" if ok else "failed",
        run_state="applied" if ok else "failed", result=summary, error=summary.get("error"),
    )  # fmt: skip
    return run.id


def test_a_run_page_draws_the_distribution_against_the_weights(world: World) -> None:
    run_id = _run_with_verification(world, ok=True)
    client = _signed_in(world, "viewer")
    page = client.get(f"/ui/runs/{run_id}").text
    assert 'id="run-outcome">verified<' in page
    assert page.count('class="bar"') == 2 and page.count('class="tick"') == 2
    # 30 requests at weights 1:2 ask for 10 and 20: the tooltips say both numbers.
    assert "web1: 11 requests, weight 1 asks for 10.0" in page
    assert "web2: 19 requests, weight 2 asks for 20.0" in page
    assert '<td class="arp-owner">lvs1</td>' in page
    live = client.get(f"/ui/runs/{run_id}/live").text
    assert live.lstrip().startswith('<div id="run-live" data-state="applied"')


def test_a_run_page_brackets_an_ipv6_vip_beside_its_port(world: World) -> None:
    run_id = _run_with_verification(world, ok=True, vip="fd77::100")
    page = _signed_in(world, "viewer").get(f"/ui/runs/{run_id}").text
    assert "web/http [fd77::100]:80/tcp from client1" in page
    assert "fd77::100:80" not in page


def test_a_failed_verification_says_what_failed_in_words(world: World) -> None:
    run_id = _run_with_verification(world, ok=False)
    page = _signed_in(world, "viewer").get(f"/ui/runs/{run_id}").text
    assert 'id="run-outcome">failed<' in page
    assert "web2 answers ARP for 10.77.0.100" in page
    assert '<td class="arp-owner">lvs1, web2</td>' in page


def test_a_stale_plan_says_so_and_links_the_plan_that_replaced_it(world: World) -> None:
    old = _pending(world, "web1")
    assert world.store.transition_plan(
        old.id, ("pending",), "stale", reason="facts changed on web1"
    )
    new = _pending(world, "web2")
    page = _signed_in(world, "approver").get(f"/ui/plans/{old.id}").text
    assert "This plan is stale: facts changed on web1" in page
    assert f'href="/ui/plans/{new.id}" id="successor-link"' in page
    assert 'id="approve"' not in page


def test_the_audit_log_filters_by_who_what_and_when(world: World) -> None:
    world.store.audit("plan.approved", actor="token:alice", cluster="web")
    world.store.audit("plan.rejected", actor="token:bob", cluster="web")
    client = _signed_in(world, "viewer")
    by_alice = client.get("/ui/audit?actor=token:alice").text
    assert by_alice.count('class="audit-entry"') == 1 and "plan.approved" in by_alice
    rejected = client.get("/ui/audit?action=plan.rejected").text
    assert rejected.count('class="audit-entry"') == 1 and "token:bob" in rejected
    today = datetime.now(UTC).date()
    assert "token:bob" in client.get(f"/ui/audit?since={today}&until={today}").text
    yesterday = today - timedelta(days=1)
    assert "Nothing matches" in client.get(f"/ui/audit?until={yesterday}").text
    bad = client.get("/ui/audit?since=not-a-date&action=Bad Action").text
    assert "Ignored (not a valid value): action, since" in bad


def test_a_clusters_history_lists_its_plans_decisions_and_runs(world: World) -> None:
    run_id = _run_with_verification(world, ok=True)
    plan_id = world.store.list_runs()[0].plan_id
    world.store.update_cluster("web", head_revision=world.head, last_plan_id=plan_id, in_sync=True)
    client = _signed_in(world, "viewer")
    page = client.get("/ui/clusters/web").text
    assert f'href="/ui/plans/{plan_id}"' in page and f'href="/ui/runs/{run_id}"' in page
    assert "approved by token:approver" in page
    overview = client.get("/ui/").text
    assert "in sync" in overview and "verification passed" in overview


def test_an_admin_locks_and_unlocks_a_cluster_from_its_page(world: World) -> None:
    world.store.update_cluster("web", head_revision=world.head, in_sync=True)
    viewer = _signed_in(world, "viewer")
    page = viewer.get("/ui/clusters/web")
    assert 'id="lock-form"' not in page.text and 'id="lock"' not in page.text
    forged = viewer.post("/ui/clusters/web/lock", data={"csrf": csrf_of(page.text),
                                                       "reason": "x"})  # fmt: skip
    assert forged.status_code == 403 and world.store.cluster_locks() == {}
    admin = _signed_in(world, "admin")
    page = admin.get("/ui/clusters/web").text
    assert 'id="lock-form"' in page
    assert admin.post("/ui/clusters/web/lock", data={"reason": "x"}).status_code == 403  # no CSRF
    empty = admin.post("/ui/clusters/web/lock", data={"csrf": csrf_of(page), "reason": " "})
    assert empty.status_code == 409 and "needs a reason" in empty.text
    done = admin.post("/ui/clusters/web/lock", data={"csrf": csrf_of(page),
                                                    "reason": "incident <42>"},
                      follow_redirects=False)  # fmt: skip
    assert done.status_code == 303 and world.store.cluster_locks()["web"].actor == "token:admin"
    page = admin.get("/ui/clusters/web").text
    assert 'id="lock"' in page and "incident &lt;42&gt;" in page and 'id="unlock"' in page
    assert 'id="locked-web"' in viewer.get("/ui/").text
    assert 'id="unlock"' not in viewer.get("/ui/clusters/web").text
    again = admin.post("/ui/clusters/web/lock", data={"csrf": csrf_of(page), "reason": "y"})
    assert again.status_code == 409 and "locked already by token:admin" in again.text
    wakes = world.controller.wake_requests
    gone = admin.post("/ui/clusters/web/unlock", data={"csrf": csrf_of(page)},
                      follow_redirects=False)  # fmt: skip
    assert gone.status_code == 303 and world.store.cluster_locks() == {}
    assert world.controller.wake_requests == wakes + 1
    assert 'id="locked-web"' not in viewer.get("/ui/").text
    actions = [(e.action, e.actor) for e in world.store.list_audit(cluster="web")]
    assert ("cluster.locked", "token:admin") in actions
    assert ("cluster.unlocked", "token:admin") in actions


def test_a_plan_page_says_what_started_the_look_that_made_it(world: World) -> None:
    plan = _pending(world)
    client = _signed_in(world, "viewer")
    assert 'id="woken-by"' not in client.get(f"/ui/plans/{plan.id}").text
    world.store.audit(
        "plan.created",
        actor="controller",
        cluster="web",
        plan_id=plan.id,
        detail={"kind": "change", "woken_by": "webhook (gitea) <b>"},
    )
    page = client.get(f"/ui/plans/{plan.id}").text
    assert '<dd id="woken-by">webhook (gitea) &lt;b&gt;</dd>' in page
