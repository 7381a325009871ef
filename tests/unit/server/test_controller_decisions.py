"""The controller's decisions on fake hosts, a source without git and a clock the test moves.

Each test runs the real Controller and Store; only the hosts (`FakeTransport` answering the
facts script with captured real output), the revisions and time are fakes (fake_cluster.py).
A run the controller starts fails on the fake hosts (they apply nothing): what a test reads is
whether one was started, by whom, and which scripts went to the hosts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.errors import HostKeyRejected, SourceError, TransportError
from reconciler.server.clock import SystemClock
from reconciler.server.controller import Controller
from reconciler.server.decide import HEAL_WINDOW, MAX_HEALS_PER_WINDOW
from reconciler.server.execute import AUTO_APPROVER, HEAL_APPROVER
from reconciler.server.lifecycle import (
    AlreadyApproved,
    AlreadyOverridden,
    ApprovalRecorded,
    PlanNotPending,
    StaleApproval,
)
from reconciler.server.store.records import PlanRecord, RunRecord
from tests.unit.server.fake_cluster import ARP_IGNORE, Edit, FakeCluster, set_in

WEB = ("lvs1", "lvs2", "web1", "web2")
AUTO = set_in("shoal.toml", 'approval = "manual"', 'approval = "auto"')
HEAL = set_in("shoal.toml", 'drift = "report"', 'drift = "heal"')
WEIGHT_3 = set_in("clusters/web.toml", "weight = 2", "weight = 3")


def plans(fc: FakeCluster, **kw: object) -> list[PlanRecord]:
    return fc.store.list_plans(limit=1000, **kw)  # type: ignore[arg-type]


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


# --- approval policy ------------------------------------------------------------------------


async def test_manual_approval_leaves_a_pending_plan_and_runs_nothing(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path)
    await fc.controller.reconcile_once()
    (plan,) = plans(fc)
    assert (plan.kind, plan.state, plan.revision) == ("change", "pending", fc.source.head)
    assert fc.store.list_runs() == []
    assert fc.applied_scripts() == []
    web = fc.store.get_cluster("web")
    assert web is not None and (web.in_sync, web.last_plan_id) == (False, plan.id)


async def test_auto_approval_applies_the_new_plan_at_once(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path, AUTO)
    await fc.controller.reconcile_once()
    (plan,) = plans(fc)
    (run,) = fc.store.list_runs()
    assert (run.plan_id, run.actor) == (plan.id, AUTO_APPROVER)
    assert fc.applied_scripts(), "the plan's first phase went to a host"
    # The fake hosts refuse the phase: the run failed, and the same plan is not tried again.
    assert (run.state, plan.state) == ("failed", "failed")
    await fc.controller.reconcile_once()
    assert len(fc.store.list_runs()) == 1 and [p.id for p in plans(fc)] == [plan.id]


# --- drift ------------------------------------------------------------------------------------


async def test_drift_is_reported_once_and_not_healed_by_default(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path)
    fc.mark_applied(fc.source.head or "")
    await fc.controller.reconcile_once()
    (plan,) = plans(fc)
    assert (plan.kind, plan.state) == ("drift", "pending")
    web = fc.store.get_cluster("web")
    assert web is not None and web.drift is not None and web.in_sync is False
    assert (web.drift["plan_id"], web.drift["hosts"]) == (plan.id, list(WEB))
    first_seen = web.drift["detected_at"]
    fc.clock.elapsed += 600
    await fc.controller.reconcile_once()
    # The same drift: one audit entry, and it is dated when it was first found.
    assert len(fc.store.list_audit(action="drift.detected")) == 1
    web = fc.store.get_cluster("web")
    assert web is not None and web.drift is not None and web.drift["detected_at"] == first_seen
    assert fc.store.list_runs() == [] and fc.applied_scripts() == []


async def test_drift_heal_policy_applies_the_drift_plan(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path, HEAL)
    fc.mark_applied(fc.source.head or "")
    await fc.controller.reconcile_once()
    (plan,) = plans(fc)
    (run,) = fc.store.list_runs()
    assert plan.kind == "drift" and (run.plan_id, run.actor) == (plan.id, HEAL_APPROVER)
    assert fc.applied_scripts()


async def test_a_heal_repeated_too_often_waits_for_a_person_until_the_window_passes(
    tmp_path: Path,
) -> None:
    fc = FakeCluster(tmp_path, HEAL)
    fc.mark_applied(fc.source.head or "")

    async def heal_that_comes_back() -> None:
        """A pass heals; the heal "succeeds" and the same drift comes back (the fake hosts
        keep their facts, as a host where something undoes our change would)."""
        await fc.controller.reconcile_once()
        for plan in plans(fc, states=("failed",)):
            assert fc.store.transition_plan(plan.id, ("failed",), "applied")

    for _ in range(MAX_HEALS_PER_WINDOW):
        await heal_that_comes_back()
    heals = fc.store.list_runs()
    assert len(heals) == MAX_HEALS_PER_WINDOW and {r.actor for r in heals} == {HEAL_APPROVER}
    await fc.controller.reconcile_once()
    assert len(fc.store.list_runs()) == MAX_HEALS_PER_WINDOW
    (repeated,) = fc.store.list_audit(action="drift.heal_repeated")
    assert repeated.detail == {"heals_in_window": MAX_HEALS_PER_WINDOW}
    (waiting,) = plans(fc, states=("pending",))
    fc.clock.elapsed += HEAL_WINDOW.total_seconds() + 1
    await fc.controller.reconcile_once()
    runs = fc.store.list_runs()
    assert len(runs) == MAX_HEALS_PER_WINDOW + 1 and runs[0].plan_id == waiting.id


# --- stale plans and new revisions ------------------------------------------------------------


async def test_facts_moved_since_the_plan_approval_is_refused_and_a_new_plan_made(
    tmp_path: Path,
) -> None:
    fc = FakeCluster(tmp_path)
    await fc.controller.reconcile_once()
    (plan,) = plans(fc)
    fc.hosts["web1"].sysctls[ARP_IGNORE] = "2"  # a hand change between plan and approval
    with pytest.raises(StaleApproval) as refused:
        await fc.controller.approve(plan.id, actor="token:alice")
    assert refused.value.hosts == ["web1"]
    stale = fc.store.get_plan(plan.id)
    assert stale is not None and stale.state == "stale"
    (new,) = plans(fc, states=("pending",))
    assert refused.value.new_plan_id == new.id != plan.id
    assert new.plan.hosts["web1"].facts_digest != plan.plan.hosts["web1"].facts_digest
    assert fc.store.list_runs() == [] and fc.applied_scripts() == []


async def test_facts_moved_since_the_plan_the_pass_closes_it_as_stale(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path)
    await fc.controller.reconcile_once()
    (old,) = plans(fc)
    fc.hosts["web2"].sysctls[ARP_IGNORE] = "1"
    await fc.controller.reconcile_once()
    closed = fc.store.get_plan(old.id)
    assert closed is not None and closed.state == "stale"
    assert closed.reason == "the hosts' facts changed since it was made"
    (new,) = plans(fc, states=("pending",))
    assert new.id != old.id and new.revision == old.revision


async def test_a_new_revision_while_a_plan_waits_supersedes_it(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path)
    await fc.controller.reconcile_once()
    (old,) = plans(fc)
    sha = fc.push(WEIGHT_3)
    await fc.controller.reconcile_once()
    closed = fc.store.get_plan(old.id)
    assert closed is not None and closed.state == "superseded"
    assert closed.reason == f"revision {sha[:12]} is newer"
    (new,) = plans(fc, states=("pending",))
    assert new.revision == sha
    with pytest.raises(PlanNotPending):
        await fc.controller.approve(old.id, actor="token:alice")
    assert fc.store.list_runs() == []


async def test_approving_a_plan_after_the_branch_moved_supersedes_it(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path)
    await fc.controller.reconcile_once()
    (old,) = plans(fc)
    sha = fc.push(WEIGHT_3)
    wakes = fc.controller.wake_requests
    with pytest.raises(StaleApproval) as refused:
        await fc.controller.approve(old.id, actor="token:alice")
    assert refused.value.reason == f"the branch moved to {sha[:12]}"
    closed = fc.store.get_plan(old.id)
    assert closed is not None and closed.state == "superseded"
    assert fc.controller.wake_requests == wakes + 1  # the loop plans the new head soon
    assert fc.store.list_runs() == [] and fc.applied_scripts() == []


# --- hosts that cannot be read, and retries -------------------------------------------------


async def test_unreachable_hosts_keep_the_cluster_out_of_sync(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path)
    fc.down.update(WEB)
    await fc.controller.reconcile_once()
    web = fc.store.get_cluster("web")
    assert web is not None and web.in_sync is False and web.applied_revision is None
    assert web.last_error is not None
    assert all(f"{h}: unreachable (" in web.last_error for h in WEB)
    assert plans(fc) == []


async def test_unreachable_hosts_are_looked_at_again_with_backoff_then_at_the_poll(
    tmp_path: Path,
) -> None:
    fc = FakeCluster(tmp_path, poll_interval=60)
    fc.down.update(WEB)
    fc.clock.budget = 4

    def host_returns(waits: int) -> None:
        if waits == 3:
            fc.down.clear()

    fc.clock.on_wait = host_returns
    await fc.controller.start()
    await until(lambda: len(fc.clock.waits) > fc.clock.budget, "the loop's sleeps")
    await fc.controller.stop()
    # Every draw lands mid-interval: backoffs 0.75, 1.5, 3 s (the early passes look at the
    # failing unit only); once the hosts answer, the poll, counted from the last full pass;
    # after the poll's full pass, a whole poll interval.
    assert fc.clock.waits[:3] == [0.75, 1.5, 3.0]
    assert fc.clock.waits[3] == pytest.approx(60 - 0.75 - 1.5 - 3.0)
    assert fc.clock.waits[4] == 60.0
    assert fc.controller.passes == 5
    (plan,) = plans(fc)
    assert plan.state == "pending"  # planned once the hosts answered
    assert fc.controller.schedule.attempts("web") == 0


async def test_a_transport_error_is_recorded_and_retried_sooner_each_time_less(
    tmp_path: Path,
) -> None:
    fc = FakeCluster(tmp_path, poll_interval=3600)
    fc.transport_error = TransportError("lvs1", "no route to the SSH agent")
    await fc.controller.reconcile_once()
    web = fc.store.get_cluster("web")
    assert web is not None and web.last_error == "lvs1: no route to the SSH agent"
    assert await fc.controller.sleep() == {"web"}
    await fc.controller.reconcile_once(only={"web"})
    assert await fc.controller.sleep(full=False) == {"web"}
    assert fc.clock.waits == [0.75, 1.5]
    fc.transport_error = None
    await fc.controller.reconcile_once(only={"web"})
    assert await fc.controller.sleep(full=False) is None
    assert fc.clock.waits[2] == pytest.approx(3600 - 0.75 - 1.5)
    assert len(plans(fc)) == 1


async def test_a_failed_fetch_is_retried_with_backoff(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path, poll_interval=3600)
    fc.source.failing = SourceError("cannot fetch branch main: connection refused")
    await fc.controller.reconcile_once()
    assert fc.controller.last_source_error == str(fc.source.failing)
    # An early pass for the fetch looks at everything (None), not at some units.
    assert await fc.controller.sleep() is None
    assert fc.clock.waits == [0.75]
    fc.source.failing = None
    await fc.controller.reconcile_once()
    assert fc.controller.last_source_error is None and len(plans(fc)) == 1


async def test_a_stalled_unit_waits_for_a_new_revision_or_a_person(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path, poll_interval=3600)
    fc.transport_error = HostKeyRejected("lvs1", "SHA256:changed")
    await fc.controller.reconcile_once()
    assert fc.controller.schedule.held("web", fc.source.head or "")
    fc.transport_error = None
    await fc.controller.reconcile_once()  # the same revision: not looked at
    assert plans(fc) == [] and fc.transports == []
    assert await fc.controller.sleep() is None and fc.clock.waits == [3600.0]
    fc.push(WEIGHT_3)
    await fc.controller.reconcile_once()
    assert len(plans(fc)) == 1

    again = FakeCluster(tmp_path / "again", poll_interval=3600)
    again.transport_error = HostKeyRejected("lvs1", "SHA256:changed")
    await again.controller.reconcile_once()
    again.transport_error = None
    again.controller.wake("requested by token:admin")
    await again.controller.reconcile_once()
    assert len(plans(again)) == 1


# --- two-person rule --------------------------------------------------------------------------

TWO = set_in("clusters/web.toml", 'arp_method = "sysctl"',
             'arp_method = "sysctl"\napprovals_required = 2')


async def test_two_approvals_by_different_tokens_start_the_run(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path, TWO)
    await fc.controller.reconcile_once()
    (plan,) = plans(fc)
    first = await fc.controller.approve(plan.id, actor="token:alice", comment="looks right")
    assert isinstance(first, ApprovalRecorded)
    assert (first.approvers, first.required) == (["token:alice"], 2)
    assert fc.store.list_runs() == [] and fc.applied_scripts() == []
    still = fc.store.get_plan(plan.id)
    assert still is not None and still.state == "pending"
    with pytest.raises(AlreadyApproved):
        await fc.controller.approve(plan.id, actor="token:alice")
    assert fc.store.list_runs() == []
    second = await fc.controller.approve(plan.id, actor="token:bob", comment="agreed")
    assert isinstance(second, RunRecord) and second.plan_id == plan.id
    (run,) = fc.store.list_runs()
    assert run.actor == "token:bob"
    decided = [(e.action, e.actor) for e in fc.store.list_audit(plan_id=plan.id)
               if e.action.startswith("plan.")]  # fmt: skip
    assert ("plan.approval_recorded", "token:alice") in decided
    assert ("plan.approved", "token:bob") in decided
    assert fc.store.approvers_of(plan.id) == ["token:alice", "token:bob"]
    await fc.controller.wait_idle()


async def test_approvals_of_a_stale_plan_do_not_carry_over(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path, TWO)
    await fc.controller.reconcile_once()
    (plan,) = plans(fc)
    assert isinstance(await fc.controller.approve(plan.id, actor="token:alice"), ApprovalRecorded)
    fc.hosts["web1"].sysctls[ARP_IGNORE] = "2"
    with pytest.raises(StaleApproval) as refused:
        await fc.controller.approve(plan.id, actor="token:bob")
    new_id = refused.value.new_plan_id
    assert new_id is not None and new_id != plan.id
    again = await fc.controller.approve(new_id, actor="token:bob")
    assert isinstance(again, ApprovalRecorded) and again.approvers == ["token:bob"]
    assert fc.store.list_runs() == []


# --- cluster locks ----------------------------------------------------------------------------


async def test_a_lock_holds_policy_approval_and_the_unlock_releases_it(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path, AUTO)
    assert fc.store.lock_cluster("web", reason="incident 42", actor="token:admin") is not None
    await fc.controller.reconcile_once()
    (plan,) = plans(fc)
    assert plan.state == "pending" and fc.store.list_runs() == [] and fc.applied_scripts() == []
    assert fc.store.unlock_cluster("web") is not None
    await fc.controller.reconcile_once()
    (run,) = fc.store.list_runs()
    assert (run.plan_id, run.actor) == (plan.id, AUTO_APPROVER) and fc.applied_scripts()


async def test_a_lock_holds_drift_heal(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path, HEAL)
    fc.mark_applied(fc.source.head or "")
    fc.store.lock_cluster("web", reason="hands off", actor="token:admin")
    await fc.controller.reconcile_once()
    (plan,) = plans(fc)
    assert (plan.kind, plan.state) == ("drift", "pending")
    assert fc.store.list_runs() == [] and fc.applied_scripts() == []


async def test_an_approval_under_a_lock_waits_and_starts_after_the_unlock(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path)
    await fc.controller.reconcile_once()
    (plan,) = plans(fc)
    fc.store.lock_cluster("web", reason="change freeze", actor="token:admin")
    waiting = await fc.controller.approve(plan.id, actor="token:alice", comment="when free")
    assert isinstance(waiting, ApprovalRecorded) and waiting.waiting is not None
    assert "cluster web is locked by token:admin" in waiting.waiting
    assert "change freeze" in waiting.waiting
    approved = fc.store.get_plan(plan.id)
    assert approved is not None and approved.state == "approved"
    await fc.controller.reconcile_once()
    assert fc.store.list_runs() == [] and fc.applied_scripts() == []
    fc.store.unlock_cluster("web")
    await fc.controller.reconcile_once()
    (run,) = fc.store.list_runs()
    assert (run.plan_id, run.actor) == (plan.id, "token:alice") and fc.applied_scripts()


# --- freeze windows ---------------------------------------------------------------------------


def freeze_from(start: datetime, seconds_left: int, kind: str = "deny") -> Edit:
    """A `[[freeze]]` window of clusters/web.toml open at `start` that ends `seconds_left`
    seconds after it (the schedule is `start`'s minute, in UTC)."""
    opened = start.replace(second=0, microsecond=0)
    duration = int((start - opened).total_seconds()) + seconds_left
    text = (f'\n[[freeze]]\nkind = "{kind}"\nschedule = "{opened.minute} {opened.hour} * * *"\n'
            f'duration = "{duration}s"\ntimezone = "UTC"\nreason = "release night"\n')  # fmt: skip

    def edit(root: Path) -> None:
        with (root / "clusters" / "web.toml").open("a") as f:
            f.write(text)

    return edit


async def test_a_deny_window_holds_an_approved_plan_which_starts_when_it_ends(
    tmp_path: Path,
) -> None:
    start = datetime.now(UTC)
    fc = FakeCluster(tmp_path, freeze_from(start, 30))
    fc.clock.start = start
    await fc.controller.reconcile_once()
    (plan,) = plans(fc)
    assert plan.state == "pending"  # made and shown all the same
    waiting = await fc.controller.approve(plan.id, actor="token:alice", comment="after it")
    assert isinstance(waiting, ApprovalRecorded) and waiting.waiting is not None
    assert "cluster web is frozen inside the deny window" in waiting.waiting
    assert "release night" in waiting.waiting
    ends = start + timedelta(seconds=30)
    assert waiting.until is not None and abs((waiting.until - ends).total_seconds()) < 1
    hold = await fc.controller.hold_of(fc.store.get_plan(plan.id))  # type: ignore[arg-type]
    assert hold is not None and hold.until == waiting.until
    await fc.controller.reconcile_once()
    assert fc.store.list_runs() == [] and fc.applied_scripts() == []
    # The loop sleeps until the window ends (not the 60 s poll), then looks at the unit.
    only = await fc.controller.sleep()
    assert only == {"web"}
    assert fc.clock.waits[-1] == pytest.approx(30, abs=1)
    await fc.controller.reconcile_once(only=only)
    (run,) = fc.store.list_runs()
    assert (run.plan_id, run.actor) == (plan.id, "token:alice") and fc.applied_scripts()


async def test_an_admin_override_with_a_reason_starts_a_plan_the_freeze_holds(
    tmp_path: Path,
) -> None:
    fc = FakeCluster(tmp_path, AUTO, freeze_from(datetime.now(UTC), 3600))
    await fc.controller.reconcile_once()
    (plan,) = plans(fc)
    assert plan.state == "pending" and fc.store.list_runs() == []  # no policy approval
    await fc.controller.override_freeze(plan.id, actor="token:admin", reason="hotfix 7")
    with pytest.raises(AlreadyOverridden):
        await fc.controller.override_freeze(plan.id, actor="token:admin", reason="again")
    (entry,) = [e for e in fc.store.list_audit() if e.action == "plan.freeze_overridden"]
    assert (entry.actor, entry.plan_id, entry.detail) == ("token:admin", plan.id,
                                                          {"reason": "hotfix 7"})  # fmt: skip
    await fc.controller.reconcile_once()
    (run,) = fc.store.list_runs()
    assert (run.plan_id, run.actor) == (plan.id, AUTO_APPROVER) and fc.applied_scripts()


async def test_outside_every_allow_window_nothing_starts_and_an_override_leaves_a_lock(
    tmp_path: Path,
) -> None:
    # An allow window that opened a minute ago and closed: outside it, nothing starts.
    fc = FakeCluster(tmp_path, AUTO, freeze_from(datetime.now(UTC) - timedelta(hours=2), 60,
                                                 kind="allow"))  # fmt: skip
    await fc.controller.reconcile_once()
    (plan,) = plans(fc)
    hold = await fc.controller.hold_of(plan)
    assert hold is not None and "outside every allow window" in hold.reason
    assert hold.until is not None and hold.until > fc.clock.now() + timedelta(hours=21)
    fc.store.lock_cluster("web", reason="incident", actor="token:admin")
    await fc.controller.override_freeze(plan.id, actor="token:admin", reason="hotfix")
    await fc.controller.reconcile_once()
    assert fc.store.list_runs() == []
    fc.store.unlock_cluster("web")
    await fc.controller.reconcile_once()
    (run,) = fc.store.list_runs()
    assert run.plan_id == plan.id


async def test_on_the_real_clock_the_running_loop_starts_the_plan_when_the_window_ends(
    tmp_path: Path,
) -> None:
    # The machine's clock and the controller's own loop (poll: an hour): a deny window that
    # ends 2 s from now; the approved plan must start at its end, not at the poll.
    start = datetime.now(UTC)
    fc = FakeCluster(tmp_path, freeze_from(start, 2))
    controller = Controller(source=fc.source, store=fc.store, transports=fc.transport,
                            clock=SystemClock(), poll_interval=3600)  # fmt: skip
    await controller.reconcile_once()
    (plan,) = plans(fc)
    waiting = await controller.approve(plan.id, actor="token:alice")
    assert isinstance(waiting, ApprovalRecorded) and waiting.until is not None
    await controller.start()
    try:
        deadline = time.monotonic() + 30
        while not fc.store.list_runs() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        (run,) = fc.store.list_runs()
    finally:
        await controller.stop()
    started = datetime.fromisoformat(run.started_at)
    assert waiting.until <= started < waiting.until + timedelta(seconds=20)
    assert (run.plan_id, run.actor) == (plan.id, "token:alice")


async def test_an_override_starts_a_plan_approved_during_the_freeze(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path, freeze_from(datetime.now(UTC), 3600))
    await fc.controller.reconcile_once()
    (plan,) = plans(fc)
    waiting = await fc.controller.approve(plan.id, actor="token:alice")
    assert isinstance(waiting, ApprovalRecorded) and waiting.waiting is not None
    wakes = fc.controller.wake_requests
    await fc.controller.override_freeze(plan.id, actor="token:admin", reason="customer down")
    assert fc.controller.wake_requests == wakes + 1
    assert await fc.controller.hold_of(plans(fc)[0]) is None
    await fc.controller.reconcile_once()
    (run,) = fc.store.list_runs()
    assert (run.plan_id, run.actor) == (plan.id, "token:alice") and fc.applied_scripts()
    with pytest.raises(PlanNotPending):
        await fc.controller.override_freeze(plan.id, actor="token:admin", reason="late")


# --- why a plan was made ----------------------------------------------------------------------


def woken_by(fc: FakeCluster, plan: PlanRecord) -> str:
    (created,) = fc.store.list_audit(plan_id=plan.id, action="plan.created")
    return str(created.detail["woken_by"])


async def test_each_plan_records_what_started_the_look_that_made_it(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path, poll_interval=60)
    fc.clock.budget = 3

    def meanwhile(waits: int) -> None:
        # While the loop sleeps: a commit, then its webhook (twice: one reason), then a
        # commit nobody announces, which the poll finds.
        if waits == 1:
            fc.push(WEIGHT_3)
            fc.controller.wake("webhook (github)")
            fc.controller.wake("webhook (github)")
        if waits == 2:
            fc.push(set_in("clusters/web.toml", "weight = 2", "weight = 4"))

    fc.clock.on_wait = meanwhile
    await fc.controller.start()
    await until(lambda: len(fc.clock.waits) > fc.clock.budget, "the loop's sleeps")
    await fc.controller.stop()
    third, second, first = plans(fc)  # newest first
    assert woken_by(fc, first) == "the server started"
    sha = second.revision[:12]
    assert woken_by(fc, second) == f"webhook (github), which found the new commit {sha}"
    assert woken_by(fc, third) == (
        f"the poll (every 60 s), which found the new commit {third.revision[:12]}"
    )
