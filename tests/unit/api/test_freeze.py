"""Freeze windows over the real app, store and git source: the plan API says why an open plan
waits and until when; an admin's override with a reason (API and CLI) is audited."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.web.render import when
from reconciler.cli.main import app
from reconciler.server.settings import ServerSettings
from reconciler.server.store.database import Store
from tests.support.api_world import FIXTURES, World, make_plan, push_tree
from tests.support.web import sign_in
from tests.unit.server.fake_cluster import FakeCluster


def frozen_repo(tmp: Path, minutes: int = 60) -> Path:
    """The example repository with a deny window over clusters/web.toml open now."""
    now = datetime.now(UTC)
    tree = tmp / "frozen"
    shutil.copytree(FIXTURES / "config-repo", tree)
    with (tree / "clusters" / "web.toml").open("a") as f:
        f.write(f'\n[[freeze]]\nkind = "deny"\nschedule = "{now.minute} {now.hour} * * *"\n'
                f'duration = "{minutes}m"\nreason = "quarter end"\n')  # fmt: skip
    return tree


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    world.head = push_tree(frozen_repo(tmp_path), world.bare, world.work)
    asyncio.run(world.controller.source.fetch())
    yield world
    world.controller.source.close()


def test_the_plan_api_says_a_plan_waits_for_the_window_and_until_when(world: World) -> None:
    plan = make_plan(world.head)
    world.store.add_plan(plan, cluster="web", kind="change")
    shown = world.client.get(f"/plans/{plan.id}", headers=world.auth("viewer")).json()
    assert "cluster web is frozen inside the deny window" in shown["waiting"]
    assert "quarter end" in shown["waiting"]
    until = datetime.fromisoformat(shown["waiting_until"])
    opened = datetime.now(UTC).replace(second=0, microsecond=0)
    assert opened + timedelta(minutes=59) <= until <= opened + timedelta(minutes=61)
    assert shown["freeze_override"] is None


def test_an_admin_overrides_the_freeze_for_one_plan_with_a_reason(world: World) -> None:
    c = world.client
    plan = make_plan(world.head)
    world.store.add_plan(plan, cluster="web", kind="change")
    url = f"/plans/{plan.id}/override-freeze"
    body = {"reason": "security fix"}
    assert c.post(url, json=body).status_code == 401
    assert c.post(url, json=body, headers=world.auth("approver")).status_code == 403
    assert c.post(url, json={"reason": ""}, headers=world.auth("admin")).status_code == 422
    wakes = world.controller.wake_requests
    done = c.post(url, json=body, headers=world.auth("admin"))
    assert done.status_code == 201, done.text
    assert (done.json()["reason"], done.json()["actor"]) == ("security fix", "token:admin")
    assert world.controller.wake_requests == wakes + 1
    again = c.post(url, json=body, headers=world.auth("admin"))
    assert again.status_code == 409 and again.json()["state"] == "pending"
    assert c.post("/plans/" + "0" * 16 + "/override-freeze", json=body,
                  headers=world.auth("admin")).status_code == 404  # fmt: skip
    shown = c.get(f"/plans/{plan.id}", headers=world.auth("viewer")).json()
    assert shown["waiting"] is None and shown["freeze_override"]["reason"] == "security fix"
    (entry,) = [e for e in world.store.list_audit() if e.action == "plan.freeze_overridden"]
    assert (entry.actor, entry.plan_id, entry.detail) == ("token:admin", plan.id,
                                                          {"reason": "security fix"})  # fmt: skip


def test_the_cli_overrides_the_freeze_in_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = Store.open(state)
    plan = make_plan("b" * 40)
    store.add_plan(plan, cluster="web", kind="change")
    store.close()
    runner = CliRunner()
    args = ["override-freeze", plan.id, "--reason", "hotfix", "--state-dir", str(state)]
    done = runner.invoke(app, [*args, "--by", "alice"])
    assert done.exit_code == 0, done.output
    twice = runner.invoke(app, args)
    assert twice.exit_code == 1 and "overridden for it already" in twice.output
    missing = runner.invoke(app, ["override-freeze", "0" * 16, "--reason", "x",
                                  "--state-dir", str(state)])  # fmt: skip
    assert missing.exit_code == 1 and "no such plan" in missing.output
    store = Store.open(state)
    try:
        override = store.freeze_override(plan.id)
        assert override is not None and (override.actor, override.reason) == ("cli:alice",
                                                                               "hotfix")
        assert [e.actor for e in store.list_audit() if e.action == "plan.freeze_overridden"] == [
            "cli:alice"]
    finally:
        store.close()


def test_the_plan_page_says_why_it_waits_and_until_when(world: World) -> None:
    plan = make_plan(world.head)
    world.store.add_plan(plan, cluster="web", kind="change")
    client = TestClient(world.app)
    assert sign_in(client, world.tokens["viewer"]).status_code == 303
    page = client.get(f"/ui/plans/{plan.id}").text
    assert 'id="waiting"' in page and "cluster web is frozen inside the deny window" in page
    shown = world.client.get(f"/plans/{plan.id}", headers=world.auth("viewer")).json()
    assert f'<strong id="waiting-until">{when(shown["waiting_until"])}</strong>' in page
    world.store.override_freeze(plan.id, reason="security <fix>", actor="token:admin")
    page = client.get(f"/ui/plans/{plan.id}").text
    assert 'id="waiting"' not in page and "security &lt;fix&gt;" in page


def test_an_approval_under_a_freeze_answers_approved_and_until_when(tmp_path: Path) -> None:
    # The real controller over fake hosts (tests/unit/server/fake_cluster.py), behind the app.
    now = datetime.now(UTC)

    def freeze(root: Path) -> None:
        with (root / "clusters" / "web.toml").open("a") as f:
            f.write(f'\n[[freeze]]\nkind = "deny"\nschedule = "{now.minute} {now.hour} * * *"\n'
                    'duration = "1h"\n')  # fmt: skip

    fc = FakeCluster(tmp_path, freeze)
    asyncio.run(fc.controller.reconcile_once())
    (plan,) = fc.store.list_plans()
    settings = ServerSettings(repo="unused", state_dir=tmp_path / "state")
    client = TestClient(create_app(fc.controller, fc.store, settings))
    approver = {"Authorization": "Bearer " + fc.store.create_token("approver", "alice")[1]}
    answer = client.post(f"/plans/{plan.id}/approve", json={"comment": "later"},
                         headers=approver)  # fmt: skip
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert (body["state"], body["run_id"]) == ("approved", None)
    assert "cluster web is frozen inside the deny window" in body["waiting"]
    opened = now.replace(second=0, microsecond=0)
    assert datetime.fromisoformat(body["waiting_until"]) == opened + timedelta(hours=1)
    shown = client.get(f"/plans/{plan.id}", headers=approver).json()
    assert (shown["state"], shown["waiting_until"]) == ("approved", body["waiting_until"])
    assert fc.store.list_runs() == []
