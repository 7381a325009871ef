"""Cluster locks over the real app and store: admin only, audited, one lock at a time, and the
CLI writing the same lock into a state dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reconciler.cli.main import app
from reconciler.server.store.database import Store
from tests.support.api_world import World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.controller.source.close()


def test_an_admin_locks_and_unlocks_a_cluster_and_both_are_audited(world: World) -> None:
    c = world.client
    body = {"reason": "incident 42"}
    assert c.post("/clusters/web/lock", json=body).status_code == 401
    approver = world.auth("approver")
    assert c.post("/clusters/web/lock", json=body, headers=approver).status_code == 403
    locked = c.post("/clusters/web/lock", json=body, headers=world.auth("admin"))
    assert locked.status_code == 201, locked.text
    assert locked.json()["reason"] == "incident 42"
    again = c.post("/clusters/web/lock", json={"reason": "x"}, headers=world.auth("admin"))
    assert again.status_code == 409 and "incident 42" in again.json()["detail"]
    listed = c.get("/locks", headers=world.auth("viewer")).json()
    assert [(lk["cluster"], lk["reason"]) for lk in listed] == [("web", "incident 42")]
    assert c.post("/clusters/web/lock", json={"reason": ""},
                  headers=world.auth("admin")).status_code == 422  # fmt: skip
    wakes = world.controller.wake_requests
    unlocked = c.post("/clusters/web/unlock", headers=world.auth("admin"))
    assert unlocked.status_code == 200 and world.controller.wake_requests == wakes + 1
    assert c.post("/clusters/web/unlock", headers=world.auth("admin")).status_code == 404
    actions = [(e.action, e.detail.get("reason")) for e in world.store.list_audit(cluster="web")]
    assert ("cluster.locked", "incident 42") in actions
    assert ("cluster.unlocked", "incident 42") in actions


def test_the_cli_locks_the_state_dir_the_server_reads(tmp_path: Path) -> None:
    runner = CliRunner()
    state = tmp_path / "state"
    done = runner.invoke(app, ["lock", "web", "--reason", "maintenance", "--state-dir",
                               str(state), "--by", "alice"])  # fmt: skip
    assert done.exit_code == 0, done.output
    twice = runner.invoke(app, ["lock", "web", "--reason", "x", "--state-dir", str(state)])
    assert twice.exit_code == 1 and "locked already by cli:alice" in twice.output
    store = Store.open(state)
    try:
        assert store.cluster_locks()["web"].reason == "maintenance"
    finally:
        store.close()
    lifted = runner.invoke(app, ["unlock", "web", "--state-dir", str(state), "--by", "bob"])
    assert lifted.exit_code == 0 and "was locked by cli:alice: maintenance" in lifted.output
    store = Store.open(state)
    try:
        assert store.cluster_locks() == {}
        assert [e.actor for e in store.list_audit(action="cluster.unlocked")] == ["cli:bob"]
    finally:
        store.close()
