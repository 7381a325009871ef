"""The store: schema, plan lifecycle (compare-and-set), runs, audit, tokens, restarts.

Every test that takes `open_store` or `store` runs twice, on SQLite and on PostgreSQL (a real
server, tests/support/postgres.py); the few that read the SQLite file itself say so.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.server.store.database import Store
from reconciler.server.store.migrations import MIGRATIONS, SCHEMA_VERSION
from reconciler.server.store.records import FencedOut, PlanExists, StepResultRecord
from reconciler.server.store.tokens import TOKEN_PREFIX, hash_token, token_id_of
from tests.conftest import StoreOpener
from tests.support.plans import make_plan


@pytest.fixture
def store(open_store: StoreOpener) -> Store:
    return open_store()


def test_schema_is_versioned(open_store: StoreOpener) -> None:
    store = open_store()
    assert store.schema_version() == SCHEMA_VERSION
    versions = [r[0] for r in store._query("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    # Opening again applies nothing twice.
    store.close()
    again = open_store()
    assert again.schema_version() == SCHEMA_VERSION
    assert len(again._query("SELECT version FROM schema_migrations")) == SCHEMA_VERSION


def test_sqlite_store_is_one_file_in_wal_mode(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / "shoal.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


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


def test_two_servers_on_one_store_approve_once(open_store: StoreOpener) -> None:
    """Two connections, as two servers would hold: the compare-and-set holds across them."""
    first, second = open_store(), open_store()
    plan = make_plan()
    first.add_plan(plan, cluster="web", kind="change")
    results: list[object] = []

    def approve(store: Store, i: int) -> None:
        results.append(store.approve_and_start_run(plan.id, actor=f"u{i}", comment=""))

    threads = [threading.Thread(target=approve, args=((first, second)[i % 2], i))
               for i in range(20)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([r for r in results if r is not None]) == 1
    assert len(second.approvals_for(plan.id)) == 1
    assert len(first.list_runs(plan_id=plan.id)) == 1


def test_restart_loses_nothing(open_store: StoreOpener) -> None:
    store = open_store()
    plan = make_plan()
    store.add_plan(plan, cluster="web", kind="change")
    store.update_cluster("web", head_revision="a" * 40, errors=[{"text": "x"}], in_sync=False)
    store.audit("plan.created", actor="controller", cluster="web", plan_id=plan.id)
    _, token = store.create_token("viewer", "bob")
    # No close(): a killed process does not close either.
    again = open_store()
    record = again.get_plan(plan.id)
    assert record is not None and record.state == "pending"
    cluster = again.get_cluster("web")
    assert cluster is not None and cluster.errors == [{"text": "x"}] and cluster.in_sync is False
    assert [a.action for a in again.list_audit()] == ["plan.created"]
    assert again.authenticate(token) is not None


def test_sqlite_file_holds_no_token(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    _, token = store.create_token("approver", "alice")
    raw = (tmp_path / "shoal.db").read_bytes() + (tmp_path / "shoal.db-wal").read_bytes()
    assert token.encode() not in raw


def test_tokens_are_hashed_and_checked(store: Store) -> None:
    record, token = store.create_token("approver", "alice")
    assert token.startswith("shoal_")
    stored = [str(r[i]) for r in store._query("SELECT * FROM tokens") for i in range(6)]
    assert all(token not in column for column in stored)
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


def test_webhook_deliveries_are_remembered_across_a_restart(open_store: StoreOpener) -> None:
    first = open_store()
    assert first.remember_delivery("github", "d-1") is True
    assert first.remember_delivery("github", "d-1") is False
    # The same id from another scheme is another delivery.
    assert first.remember_delivery("gitlab", "d-1") is True
    first.close()
    again = open_store()
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


def test_migrations_upgrade_a_version_1_store(open_store: StoreOpener) -> None:
    store = open_store()
    store.audit("before.upgrade", actor="t")
    # Back to what a store of version 1 had (the SQL is SQLite's, translated as the migrations).
    with store._tx() as db:
        for statement in ("DROP TABLE webhook_deliveries", "DROP TABLE web_sessions",
                          "DROP TABLE cluster_locks", "DROP TABLE freeze_overrides",
                          "DROP INDEX audit_actor",
                          "DROP INDEX audit_plan", "DROP TABLE cluster_owners",
                          "ALTER TABLE runs DROP COLUMN fence_json",
                          "DELETE FROM schema_migrations WHERE version >= 2"):  # fmt: skip
            db.execute(statement)
    store.close()
    upgraded = open_store()
    assert upgraded.schema_version() == SCHEMA_VERSION
    assert upgraded.remember_delivery("github", "x") is True
    token, _ = upgraded.create_token("viewer")
    assert upgraded.open_session(token, timedelta(hours=1))[0].token_id == token.id
    assert [a.action for a in upgraded.list_audit()] == ["before.upgrade"]
    assert upgraded.lock_cluster("web", reason="upgrade test", actor="t") is not None
    assert upgraded.freeze_override("p" * 16) is None
    assert upgraded.own_cluster("web", "after-upgrade") == 1


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


def test_approval_votes_and_approvers_in_order(store: Store) -> None:
    plan = make_plan()
    store.add_plan(plan, cluster="web", kind="change")
    assert store.add_approval_vote(plan.id, actor="token:bob", comment="one")
    assert store.add_approval_vote(plan.id, actor="token:alice", comment="two")
    assert store.add_approval_vote(plan.id, actor="token:bob", comment="again")
    assert store.approvers_of(plan.id) == ["token:bob", "token:alice"]
    assert store.decide_plan(plan.id, decision="approve", actor="token:carol", comment="")
    # No longer pending: a late vote is refused and writes nothing.
    assert not store.add_approval_vote(plan.id, actor="token:dave", comment="late")
    assert store.approvers_of(plan.id) == ["token:bob", "token:alice", "token:carol"]
    run = store.start_run(plan.id, actor="token:carol")
    assert run is not None and run.cluster == "web"
    assert store.start_run(plan.id, actor="token:carol") is None  # applying already


def test_sessions_open_read_expire_and_end(store: Store) -> None:
    token, _ = store.create_token("approver", "alice")
    start = datetime(2026, 1, 1, 12, tzinfo=UTC)
    session, secret = store.open_session(token, timedelta(hours=1), now=start)
    found = store.session_of(secret, now=start + timedelta(minutes=59))
    assert found is not None and found[0] == session and found[1].name == "alice"
    assert store.session_of(secret, now=start + timedelta(hours=1)) is None  # expired
    assert store.session_of(secret + "x", now=start) is None
    # Opening another forgets the expired ones.
    two_hours_on = start + timedelta(hours=2)
    later, later_secret = store.open_session(token, timedelta(hours=1), now=two_hours_on)
    assert store._query("SELECT id FROM web_sessions")[0][0] == later.id
    assert store.end_session(later_secret) and not store.end_session(later_secret)
    _, kept = store.open_session(token, timedelta(hours=1))
    store.revoke_token(token.id)
    assert store.session_of(kept) is None  # its token was revoked


def test_totals_count_from_the_records(store: Store) -> None:
    failed, passed = make_plan(), make_plan(host="web2")
    store.add_plan(failed, cluster="web", kind="change")
    store.add_plan(passed, cluster="web", kind="drift")
    for plan, ok in ((failed, False), (passed, True)):
        run = store.approve_and_start_run(plan.id, actor="t", comment="")
        assert run is not None
        step = StepResultRecord(0, "web1", "s", "n", "ok", rollback=not ok)
        store.add_step_results(run.id, [step])
        store.finish_run(run.id, ok=ok, plan_state="applied" if ok else "failed",
                         run_state="applied" if ok else "failed",
                         result={"verification": {"ok": ok}})  # fmt: skip
    store.update_cluster("web", applied_revision="c" * 40)
    totals = store.totals()
    assert totals.plans_by_state == {"applied": 1, "failed": 1}
    assert totals.runs_by_state == {"applied": 1, "failed": 1}
    counts = (totals.runs_rolled_back, totals.verification_failures, totals.drift_reports)
    assert counts == (1, 1, 1)
    assert totals.applied_revisions == {"web": "c" * 40}


def test_final_step_rows_replace_the_live_ones(store: Store) -> None:
    plan = make_plan()
    store.add_plan(plan, cluster="web", kind="change")
    run = store.approve_and_start_run(plan.id, actor="t", comment="")
    assert run is not None
    store.add_step_results(run.id, [StepResultRecord(0, "web1", "s", "live", "changed")])
    # The same seq written again takes the row's place (an upsert), on both stores.
    store.add_step_results(run.id, [StepResultRecord(0, "web1", "s", "again", "ok")])
    assert [s.name for s in store.step_results(run.id)] == ["again"]
    store.add_step_results(run.id, [StepResultRecord(0, "web1", "s", "final", "ok"),
                                    StepResultRecord(1, "web2", "t", "final2", "ok")],
                           replace=True)  # fmt: skip
    assert [(s.seq, s.name) for s in store.step_results(run.id)] == [(0, "final"), (1, "final2")]


def test_runs_backups_audit_times_and_clusters_by_membership(store: Store) -> None:
    web, unit = make_plan(), make_plan(host="web2")
    store.add_plan(web, cluster="web", kind="change")
    store.add_plan(unit, cluster="api,web", kind="change")
    runs = [store.approve_and_start_run(p.id, actor="t", comment="") for p in (web, unit)]
    assert all(runs)
    assert {r.plan_id for r in store.list_runs(cluster="web")} == {web.id, unit.id}
    assert [r.plan_id for r in store.list_runs(cluster="api")] == [unit.id]
    assert store.list_runs(cluster="ap") == []
    # Equal start times (same millisecond) still list newest first: insertion order decides.
    assert [r.plan_id for r in store.list_runs(limit=1)] == [unit.id]
    store.add_backup(runs[1].id, unit.id, "web2", "/b/1", {"n": 1})  # type: ignore[union-attr]
    assert [b.location for b in store.backups(plan_id=unit.id)] == ["/b/1"]
    store.audit("x", actor="a")
    now = datetime.now(UTC)
    since = (now - timedelta(minutes=5)).isoformat(timespec="milliseconds")
    assert [r.action for r in store.list_audit(since=since)] == ["x"]
    assert store.list_audit(until=since) == []
    assert [r.action for r in store.list_audit(since=now.date().isoformat())] == ["x"]
    store.record_revision("d" * 40, valid=False, errors=[{"text": "bad"}])
    store.record_revision("d" * 40, valid=True, errors=[])
    revision = store.get_revision("d" * 40)
    assert revision is not None and (revision.valid, revision.errors) == (True, [])
    store.update_cluster("web")
    store.update_cluster("api", in_sync=True)
    assert [c.name for c in store.list_clusters()] == ["api", "web"]
    assert store.ping()


def test_a_plan_id_taken_is_refused_and_nothing_is_left_half_written(store: Store) -> None:
    plan = make_plan()
    store.add_plan(plan, cluster="web", kind="change")
    with pytest.raises(PlanExists):
        store.add_plan(plan, cluster="web", kind="drift")
    # The store goes on working after the refused write (PostgreSQL: the transaction was
    # rolled back, not left aborted).
    assert [p.kind for p in store.list_plans()] == ["change"]
    assert store.lock_cluster("web", reason="r", actor="a") is not None
    assert store.lock_cluster("web", reason="again", actor="b") is None
    assert store.cluster_locks()["web"].reason == "r"
    unlocked = store.unlock_cluster("web")
    assert unlocked is not None and unlocked.actor == "a" and store.unlock_cluster("web") is None


def test_a_write_under_a_stale_owner_epoch_is_refused(open_store: StoreOpener) -> None:
    """Server A owns web (epoch 1) and runs a plan; B takes web over (epoch 2): every write of
    A's run under epoch 1 is refused and writes nothing, until B adopts the run."""
    a, b = open_store(), open_store()
    assert a.own_cluster("web", "server-a") == 1
    plan, later = make_plan(), make_plan(host="web2")
    a.add_plan(plan, cluster="web", kind="change")
    a.add_plan(later, cluster="web", kind="change")
    run = a.approve_and_start_run(plan.id, actor="t", comment="", fence={"web": 1})
    assert run is not None and run.fence == {"web": 1}
    step = StepResultRecord(0, "web1", "s", "before the takeover", "changed")
    a.add_step_results(run.id, [step], fence=run.fence)
    assert b.own_cluster("web", "server-b") == 2
    owner = b.cluster_owner("web")
    assert owner is not None and (owner.owner, owner.epoch) == ("server-b", 2)
    late = StepResultRecord(1, "web1", "s", "after the takeover", "changed")
    with pytest.raises(FencedOut) as refused:
        a.add_step_results(run.id, [late], fence=run.fence)
    assert (refused.value.cluster, refused.value.epoch, refused.value.current) == ("web", 1, 2)
    with pytest.raises(FencedOut):
        a.finish_run(run.id, ok=True, plan_state="applied", run_state="applied", result={},
                     fence=run.fence)  # fmt: skip
    with pytest.raises(FencedOut):
        a.add_backup(run.id, plan.id, "web1", "/b", {}, fence=run.fence)
    with pytest.raises(FencedOut):
        a.add_step_results(run.id, [late])  # no fence at all: refused too
    with pytest.raises(FencedOut):
        a.approve_and_start_run(later.id, actor="t", comment="", fence={"web": 1})
    with pytest.raises(FencedOut):
        a.check_fence(run.fence)
    # Nothing of the refused writes is there.
    assert [s.name for s in b.step_results(run.id)] == ["before the takeover"]
    current = b.get_run(run.id)
    assert current is not None and current.state == "applying" and b.backups(run_id=run.id) == []
    record = b.get_plan(later.id)
    assert record is not None and record.state == "pending" and b.approvals_for(later.id) == []
    # B takes the run over: its writes go in, A's stay refused.
    b.adopt_run(run.id, {"web": 2})
    with pytest.raises(FencedOut):
        b.adopt_run(run.id, {"web": 1})
    with pytest.raises(FencedOut):
        a.finish_run(run.id, ok=True, plan_state="applied", run_state="applied", result={},
                     fence={"web": 1})  # fmt: skip
    b.finish_run(run.id, ok=False, plan_state="failed", run_state="failed", result=None,
                 error="rolled back by server-b", fence={"web": 2})  # fmt: skip
    done = b.get_run(run.id)
    assert done is not None and done.state == "failed" and done.fence == {"web": 2}
