"""The SQLite store: schema, plan lifecycle (compare-and-set), runs, audit, tokens, restarts."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.server.store.database import Store
from reconciler.server.store.migrations import MIGRATIONS, SCHEMA_VERSION
from reconciler.server.store.records import StepResultRecord
from reconciler.server.store.tokens import TOKEN_PREFIX, hash_token, token_id_of
from tests.support.plans import make_plan


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path)


def test_schema_is_versioned_and_wal(store: Store, tmp_path: Path) -> None:
    assert store.schema_version() == SCHEMA_VERSION
    db = sqlite3.connect(tmp_path / "shoal.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    versions = [r[0] for r in db.execute("SELECT version FROM schema_migrations")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    # Opening again applies nothing twice.
    store.close()
    again = Store.open(tmp_path)
    assert again.schema_version() == SCHEMA_VERSION


def test_plan_roundtrip_and_filters(store: Store) -> None:
    plan = make_plan()
    record = store.add_plan(plan, cluster="web", kind="change")
    assert record.state == "pending"
    assert record.plan == plan
    other = store.add_plan(make_plan(host="web2"), cluster="api,web", kind="drift")
    assert {p.id for p in store.list_plans(cluster="web")} == {plan.id, other.id}
    assert [p.id for p in store.list_plans(cluster="api")] == [other.id]
    assert store.list_plans(cluster="we") == []  # membership, not substring
    assert [p.id for p in store.list_plans(states=("pending",), base_id=plan.id)] == [plan.id]


def test_transition_is_compare_and_set(store: Store) -> None:
    plan = make_plan()
    store.add_plan(plan, cluster="web", kind="change")
    assert store.transition_plan(plan.id, ("pending",), "stale", reason="facts changed")
    assert not store.transition_plan(plan.id, ("pending",), "superseded")
    record = store.get_plan(plan.id)
    assert record is not None and record.state == "stale" and record.reason == "facts changed"


def test_one_approval_wins_a_race(store: Store) -> None:
    plan = make_plan()
    store.add_plan(plan, cluster="web", kind="change")
    results: list[object] = []

    def approve(i: int) -> None:
        results.append(store.approve_and_start_run(plan.id, actor=f"u{i}", comment=""))

    threads = [threading.Thread(target=approve, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runs = [r for r in results if r is not None]
    assert len(runs) == 1
    assert len(store.approvals_for(plan.id)) == 1
    record = store.get_plan(plan.id)
    assert record is not None and record.state == "applying"
    assert not store.decide_plan(plan.id, decision="reject", actor="x", comment="too late")


def test_run_lifecycle_with_steps_and_backups(store: Store) -> None:
    plan = make_plan()
    store.add_plan(plan, cluster="web", kind="change")
    run = store.approve_and_start_run(plan.id, actor="token:alice", comment="ok")
    assert run is not None and run.state == "applying"
    assert [r.id for r in store.list_runs(state="applying")] == [run.id]
    store.add_step_results(
        run.id,
        [
            StepResultRecord(0, "web1", "web1/vip/add", "add vip", "changed", changes={"a": 1}),
            StepResultRecord(1, "web1", "web1/vip/add", "undo", "ok", rollback=True),
        ],
    )
    store.add_backup(run.id, plan.id, "web1", "/var/lib/shoal/backups/x", {"files": 3})
    store.finish_run(
        run.id, ok=False, plan_state="failed", run_state="failed", result={"e": 1}, error="boom"
    )
    done = store.get_run(run.id)
    assert done is not None
    assert (done.state, done.ok, done.error, done.result) == ("failed", False, "boom", {"e": 1})
    record = store.get_plan(plan.id)
    assert record is not None and record.state == "failed"
    steps = store.step_results(run.id)
    assert [(s.seq, s.rollback, s.changes) for s in steps] == [(0, False, {"a": 1}), (1, True, {})]
    assert store.backups(run_id=run.id)[0].detail == {"files": 3}


def test_restart_loses_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    plan = make_plan()
    store.add_plan(plan, cluster="web", kind="change")
    store.update_cluster("web", head_revision="a" * 40, errors=[{"text": "x"}], in_sync=False)
    store.audit("plan.created", actor="controller", cluster="web", plan_id=plan.id)
    _, token = store.create_token("viewer", "bob")
    # No close(): a killed process does not close either.
    again = Store.open(tmp_path)
    record = again.get_plan(plan.id)
    assert record is not None and record.state == "pending"
    cluster = again.get_cluster("web")
    assert cluster is not None and cluster.errors == [{"text": "x"}] and cluster.in_sync is False
    assert [a.action for a in again.list_audit()] == ["plan.created"]
    assert again.authenticate(token) is not None


def test_tokens_are_hashed_and_checked(store: Store, tmp_path: Path) -> None:
    record, token = store.create_token("approver", "alice")
    assert token.startswith("shoal_")
    raw = (tmp_path / "shoal.db").read_bytes() + (tmp_path / "shoal.db-wal").read_bytes()
    assert token.encode() not in raw
    found = store.authenticate(token)
    assert found is not None and found.role == "approver" and found.actor == "token:alice"
    assert store.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.authenticate("shoal_nope_x") is None
    assert store.authenticate("garbage") is None
    assert store.revoke_token(record.id)
    assert store.authenticate(token) is None
    with pytest.raises(ValueError):
        store.create_token("root", "x")  # type: ignore[arg-type]


def test_cluster_status_fields(store: Store) -> None:
    store.update_cluster("web", drift={"hosts": ["web1"]}, in_sync=False)
    store.update_cluster("web", drift=None, in_sync=True, applied_revision="b" * 40)
    cluster = store.get_cluster("web")
    assert cluster is not None
    assert (cluster.drift, cluster.in_sync, cluster.applied_revision) == (None, True, "b" * 40)
    with pytest.raises(ValueError):
        store.update_cluster("web", bogus=1)


def test_audit_filters_and_order(store: Store) -> None:
    first = store.audit("a", actor="x", cluster="web")
    store.audit("b", actor="x", cluster="api")
    store.audit("a", actor="y", cluster="web")
    assert [r.actor for r in store.list_audit(action="a")] == ["y", "x"]
    assert [r.action for r in store.list_audit(cluster="api")] == ["b"]
    assert len(store.list_audit(after_id=first)) == 2


def test_host_facts_upsert(store: Store) -> None:
    store.put_host_facts("web1", "d1", {"hostname": {"value": "web1"}})
    store.put_host_facts("web1", "d2", {"hostname": {"value": "web1b"}})
    record = store.get_host_facts("web1")
    assert record is not None and record.digest == "d2"
    assert record.facts["hostname"]["value"] == "web1b"
    assert store.get_host_facts("nope") is None


def test_webhook_deliveries_are_remembered_across_a_restart(tmp_path: Path) -> None:
    first = Store.open(tmp_path)
    assert first.remember_delivery("github", "d-1") is True
    assert first.remember_delivery("github", "d-1") is False
    # The same id from another scheme is another delivery.
    assert first.remember_delivery("gitlab", "d-1") is True
    first.close()
    again = Store.open(tmp_path)
    assert again.remember_delivery("github", "d-1") is False
    assert again.delivery_count() == 2


def test_webhook_deliveries_are_bounded_by_count_and_age(store: Store) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(5):
        assert store.remember_delivery("shoal", f"n{i}", now=start, keep=3)
    assert store.delivery_count() == 3
    # The two oldest were forgotten, so they count as new again; the newest three do not.
    assert [store.remember_delivery("shoal", f"n{i}", now=start, keep=3) for i in (4, 3)] == [
        False,
        False,
    ]
    assert store.remember_delivery("shoal", "n0", now=start, keep=3) is True
    later = start + timedelta(days=7, seconds=1)
    assert store.remember_delivery("shoal", "n4", now=later, keep=3) is True
    assert store.delivery_count() == 1


def test_migrations_upgrade_a_version_1_store(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.audit("before.upgrade", actor="t")
    store.close()
    db = sqlite3.connect(tmp_path / "shoal.db")
    db.execute("DROP TABLE webhook_deliveries")
    db.execute("DROP TABLE web_sessions")
    db.execute("DROP TABLE cluster_locks")
    db.execute("DROP TABLE freeze_overrides")
    db.execute("DROP INDEX audit_actor")
    db.execute("DROP INDEX audit_plan")
    db.execute("DELETE FROM schema_migrations WHERE version >= 2")
    db.commit()
    db.close()
    upgraded = Store.open(tmp_path)
    assert upgraded.schema_version() == SCHEMA_VERSION
    assert upgraded.remember_delivery("github", "x") is True
    token, _ = upgraded.create_token("viewer")
    assert upgraded.open_session(token, timedelta(hours=1))[0].token_id == token.id
    assert [a.action for a in upgraded.list_audit()] == ["before.upgrade"]
    assert upgraded.lock_cluster("web", reason="upgrade test", actor="t") is not None
    assert upgraded.freeze_override("p" * 16) is None


# Shipped migrations are never edited (existing state directories must keep opening): their SQL
# is pinned here. A new migration appends an entry, and a line here.
SHIPPED_MIGRATIONS = {
    1: "7132f77ed068a0446e8e6fc2ed1dc8da7cbad30165064844e81c1a9ce5c67333",
    2: "ad43ec77606017e19806223d35243ef6a872da47ba1f3e1a9a9e845031fd75a1",
}


def test_shipped_migrations_are_unchanged() -> None:
    shipped = {v: hashlib.sha256(sql.encode()).hexdigest() for v, sql in MIGRATIONS}
    assert {v: shipped[v] for v in SHIPPED_MIGRATIONS} == SHIPPED_MIGRATIONS
    assert [v for v, _ in MIGRATIONS] == sorted(shipped)


def test_a_token_is_found_by_its_id_and_checked_by_its_hash(store: Store) -> None:
    record, token = store.create_token("viewer", "ci")
    assert token_id_of(token) == record.id
    assert store.authenticate(token) == record
    # The same id with other secret text: the hash decides.
    forged = f"{TOKEN_PREFIX}_{record.id}_{'x' * 43}"
    assert store.authenticate(forged) is None
    assert token_id_of("bearer_" + token) is None
    stored = store._query("SELECT sha256 FROM tokens WHERE id = ?", (record.id,))[0][0]
    assert stored == hash_token(token) and token not in stored
