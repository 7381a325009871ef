"""Cluster locks over the real app and store: admin only, audited, one lock at a time, and the
CLI writing the same lock into a state dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reconciler.cli.main import app
from tests.conftest import StoreMaker, StoreOpener
from tests.support.api_world import World


@pytest.fixture
def world(tmp_path: Path, app_stores: StoreMaker) -> Iterator[World]:
    world = World(tmp_path, app_stores)
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


def test_the_cli_locks_the_store_the_server_reads(
    tmp_path: Path, store_backend: tuple[str, str | None], open_store: StoreOpener
) -> None:
    """The state dir's SQLite file, or the PostgreSQL store given by --store."""
    runner = CliRunner()
    state = tmp_path / "state"
    _, url = store_backend
    where = ["--state-dir", str(state), *(["--store", url] if url else [])]
    done = runner.invoke(app, ["lock", "web", "--reason", "maintenance", *where, "--by", "alice"])
    assert done.exit_code == 0, done.output
    twice = runner.invoke(app, ["lock", "web", "--reason", "x", *where])
    assert twice.exit_code == 1 and "locked already by cli:alice" in twice.output
    store = open_store()
    assert store.cluster_locks()["web"].reason == "maintenance"
    lifted = runner.invoke(app, ["unlock", "web", *where, "--by", "bob"])
    assert lifted.exit_code == 0 and "was locked by cli:alice: maintenance" in lifted.output
    assert store.cluster_locks() == {}
    assert [e.actor for e in store.list_audit(action="cluster.unlocked")] == ["cli:bob"]


def test_a_store_url_that_is_not_postgresql_is_refused_by_name(tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["lock", "web", "--reason", "x", "--state-dir", str(tmp_path),
                               "--store", "mysql://bob:hunter2@db/shoal"])  # fmt: skip
    assert done.exit_code == 2
    assert "error: store 'mysql://bob:***@db/shoal': not a postgresql:// URL" in done.output
    assert "hunter2" not in done.output and not (tmp_path / "shoal.db").exists()


def test_a_postgresql_store_that_cannot_be_reached_is_named(tmp_path: Path) -> None:
    runner = CliRunner()
    # A socket directory with no server in it: nothing listens, nothing leaves the machine.
    url = f"postgresql://bob:hunter2@/shoal?host={tmp_path}"
    done = runner.invoke(app, ["unlock", "web", "--state-dir", str(tmp_path), "--store", url])
    assert done.exit_code == 2, done.output
    assert f"error: store 'postgresql://bob:***@/shoal?host={tmp_path}': cannot connect" in (
        done.output
    )
    assert "hunter2" not in done.output
