"""The watch loop: the server's one writer of plans, runs and cluster status.

Level-triggered, after controller-runtime: every pass reads the branch head from git and every
host's current facts, and decides from those alone. A webhook only wakes the loop; its payload
is never read. Wakes that arrive during a pass coalesce into one more pass. At start, runs a crash
left `applying` are rolled back first (`crash_recovery`).

The rooms of the server, in the order of a pass:

    passes          fetch head -> load + validate -> per unit: gather facts -> plan
    decide          the plan -> nothing / pending / drift report / apply by policy
    execute         the run of an approved plan
    approvals       a person's approve (stale check, 409) or reject, called by the API
    crash_recovery  start-up rollback of interrupted runs
    status          what the store says about clusters, revisions and open plans
    retry/schedule  what an error's class says to do next, kept per unit

This module owns the loop and the retry decisions it acts on: a unit whose pass raised, or that
has a host it could not reach, is looked at again after a backoff (sooner than the poll); a unit
stalled on its revision waits for the next one. Time and hosts come in from outside: a `Clock`
and a `TransportFactory` (by default the machine's clocks and SSH with the client key).

One reconciliation per cluster at a time: every pass, approval and recovery holds the asyncio
locks of its clusters (taken in name order, so two units cannot deadlock).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Coroutine
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from reconciler.desired.models import Desired
from reconciler.errors import HostUnreachable, ShoalError
from reconciler.logfmt import log_context
from reconciler.server import approvals
from reconciler.server.clock import Clock, SystemClock
from reconciler.server.context import ServerContext
from reconciler.server.crash_recovery import recover
from reconciler.server.gate import Hold, apply_blocked
from reconciler.server.lifecycle import ApprovalRecorded
from reconciler.server.metrics import ServerMetrics
from reconciler.server.notify import Notifier
from reconciler.server.notify_settings import NotifySettings
from reconciler.server.passes import UnitLook, pass_units, read_head, reconcile_unit
from reconciler.server.retry import GiveUp, Requeue, RetryDecision, retry_decision
from reconciler.server.schedule import PASS, SOURCE, Schedule
from reconciler.server.source import CommitInfo, Source
from reconciler.server.status import record_failure
from reconciler.server.store.database import Store
from reconciler.server.store.freeze_overrides import FreezeOverride
from reconciler.server.store.records import PlanRecord, RunRecord
from reconciler.server.units import unit_key, unit_of
from reconciler.transport.connect import transport_for
from reconciler.transport.protocol import TransportFactory

# Distinct wake reasons kept for one pass (a burst of webhooks is one reason).
MAX_WAKE_REASONS = 8

log = logging.getLogger("shoal.controller")

# Seconds after a freeze window's end that the loop looks at the unit it held.
LOOK_MARGIN = 0.1


class Controller:
    """Owns the watch loop, approvals, and crash recovery. Start with `start()`.

    `transports` makes the transport of a pass, run or recovery (default: SSH to the revision's
    inventory with `client_key`); `clock` is all the loop knows of time (default: the system's).
    """

    def __init__(
        self,
        *,
        source: Source,
        store: Store,
        client_key: Path | None = None,
        transports: TransportFactory | None = None,
        clock: Clock | None = None,
        poll_interval: float = 60.0,
        poll_jitter: float = 0.1,
        stop_timeout: float = 120.0,
        notify: NotifySettings | None = None,
        link_base: str = "",
    ) -> None:
        if transports is None:
            if client_key is None:
                raise ValueError("a Controller needs a transport factory or a client key")
            transports = partial(transport_for, client_key=client_key)
        self.clock: Clock = clock or SystemClock()
        self.ctx = ServerContext(
            source=source, store=store, transports=transports, clock=self.clock, wake=self.wake,
            look_at=self.look_at,
        )
        if notify is not None and notify.receivers:
            self.ctx.notifier = Notifier(notify.receivers, self.ctx.metrics)
        self.ctx.link_base = link_base
        self.source = source
        self.store = store
        self.poll_interval = poll_interval
        self.poll_jitter = poll_jitter
        self.stop_timeout = stop_timeout
        self.schedule = Schedule(self.clock)
        self._wake = asyncio.Event()
        self._next_poll: float | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._applies: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.ready = False
        self.recovered = False
        self.wake_requests = 0
        # What asked for the next pass (webhook, Reconcile now, an unlock ...): the plans that
        # pass makes say it (`ServerContext.woken_by`).
        self._wake_reasons: list[str] = []
        self.passes = 0
        self.passes_completed = 0
        self.last_pass_at: str | None = None
        self.last_source_error: str | None = None
        self.head: str | None = None
        self.head_errors: list[dict[str, Any]] = []

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.ctx.notifier is not None:
            self.ctx.notifier.start()
        if self._loop_task is None:
            self._stopping = False
            self._loop_task = asyncio.create_task(self._run(), name="shoal-controller")

    async def stop(self) -> None:
        """Finish running applies (bounded by stop_timeout), then stop the loop."""
        self._stopping = True
        self._wake.set()
        pending: list[asyncio.Task[None]] = list(self._applies)
        if self._loop_task is not None:
            pending.append(self._loop_task)
        if pending:
            _, still = await asyncio.wait(pending, timeout=self.stop_timeout)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still)
        self._loop_task = None
        if self.ctx.notifier is not None:
            await self.ctx.notifier.stop()
        await asyncio.to_thread(self.source.close)
        self.ready = False

    def wake(self, reason: str) -> None:
        """Ask for a pass soon; any number of wakes during a pass make one more pass.

        A wake also lets go of units held until a new revision: someone asked to look again."""
        self.wake_requests += 1
        log.info("wake requested", extra={"reason": reason})
        if reason not in self._wake_reasons and len(self._wake_reasons) < MAX_WAKE_REASONS:
            self._wake_reasons.append(reason)
        self.schedule.release_holds()
        self._wake.set()

    def look_at(self, key: str, at: datetime) -> None:
        """Look at the unit `key` again at the wall-clock moment `at` (a freeze window's end).

        A little after it: a look that came a hair early would find the window still open and
        need one more pass."""
        later = (at - self.clock.now()).total_seconds() + LOOK_MARGIN
        self.schedule.look_at(key, self.clock.monotonic() + later)

    async def wait_idle(self, timeout: float = 300.0) -> None:
        """Wait until no apply started by an approval is running (tests, graceful stop)."""
        if self._applies:
            await asyncio.wait(list(self._applies), timeout=timeout)

    async def recover(self) -> None:
        """Roll back the runs a crash left `applying` (`crash_recovery`)."""
        await recover(self.ctx)

    async def _run(self) -> None:
        try:
            await self.recover()
        except Exception as exc:  # last resort: a bug; the loop must run all the same
            self._last_resort("crash recovery failed", exc)
        self.recovered = True
        self.ready = True
        only: set[str] | None = None
        while not self._stopping:
            # Cleared before the pass: a wake that lands during the pass keeps the event set,
            # so exactly one more pass follows, however many wakes there were.
            self._wake.clear()
            woken_by = self._take_wake_reasons(only, first=self.passes == 0)
            try:
                await self.reconcile_once(only=only, woken_by=woken_by)
            except Exception as exc:  # last resort: a bug; the next pass must come all the same
                self._last_resort("reconciliation pass failed", exc)
            if self._stopping:
                break
            only = await self.sleep(full=only is None)

    def _take_wake_reasons(self, only: set[str] | None, *, first: bool) -> str:
        """Why the pass about to start runs, in words; the wakes asked for so far are used up."""
        reasons, self._wake_reasons = self._wake_reasons, []
        if reasons:
            return "; ".join(reasons)
        if first:
            return "the server started"
        if only is None:
            return f"the poll (every {self.poll_interval:g} s)"
        return "the end of a freeze window" if self.schedule.last_timed else "a retry"

    async def sleep(self, *, full: bool = True) -> set[str] | None:
        """Wait for a wake, the poll, or the earliest requeued work; then what the next pass
        looks at: None for everything, else the keys of the units whose early look is due.
        `full`: the pass before looked at everything, so the poll starts again."""
        now = self.clock.monotonic()
        if full or self._next_poll is None:
            jitter = self.clock.uniform(1 - self.poll_jitter, 1 + self.poll_jitter)
            self._next_poll = now + self.poll_interval * jitter
        due = self.schedule.next_due()
        until = self._next_poll if due is None else min(due, self._next_poll)
        woken = await self.clock.wait(self._wake, max(0.0, until - now))
        if woken or self.clock.monotonic() >= self._next_poll:
            return None
        keys = self.schedule.due()
        return None if keys & {SOURCE, PASS} else keys

    def _last_resort(self, what: str, exc: Exception) -> None:
        decision = self.schedule.failed(PASS, exc, self.head)
        self._log_failure(what, exc, decision)

    @staticmethod
    def _log_failure(what: str, exc: Exception, decision: RetryDecision, **extra: Any) -> None:
        fields = {**extra, "decision": type(decision).__name__, "error": str(exc)}
        if isinstance(decision, Requeue):
            fields["retry_in"] = round(decision.after, 3)
        if isinstance(decision, GiveUp) and decision.bug:
            log.error(f"{what}: a bug", exc_info=exc, extra=fields)
        else:
            log.warning(what, extra=fields)

    # --- one pass -----------------------------------------------------------------------------

    async def reconcile_once(
        self, only: Collection[str] | None = None, *, woken_by: str = "a pass run directly"
    ) -> None:
        """One level-triggered pass over every cluster of the branch head (`only`: the units
        with these keys, unless the head moved); `woken_by`: why it runs, in words."""
        self.passes += 1
        self.last_pass_at = self.ctx.now()
        started = self.clock.monotonic()
        result = "failed"
        try:
            await self._pass(only, woken_by)
            result = ("source_error" if self.last_source_error is not None
                      else "invalid_revision" if self.head_errors else "ok")  # fmt: skip
        finally:
            self.passes_completed += 1
            self.metrics.passes.labels(result).inc()
            self.metrics.pass_seconds.observe(self.clock.monotonic() - started)

    async def _pass(self, only: Collection[str] | None, woken_by: str) -> None:
        try:
            head = await read_head(self.ctx)
        except ShoalError as exc:
            self.last_source_error = str(exc)
            self._log_failure("fetch failed", exc, self.schedule.failed(SOURCE, exc))
            return
        self.schedule.succeeded(SOURCE)
        self.schedule.succeeded(PASS)
        self.last_source_error = None
        if head.sha != self.head:
            only = None  # a new revision: every unit is looked at
            if self.head is not None:
                woken_by += f", which found the new commit {head.sha[:12]}"

        self.head = head.sha
        if head.desired is None:
            # Stalled: nothing is planned from an invalid revision until the next one.
            self.head_errors = head.errors
            return
        self.head_errors = []
        units = pass_units(head.desired)
        if only is None:
            self.schedule.keep_only({unit_key(u) for u, _ in units} | {SOURCE, PASS})
        else:
            units = [(u, orphans) for u, orphans in units if unit_key(u) in only]
        desired = head.desired
        results = await asyncio.gather(
            *(
                self._unit(unit, desired, orphans=orphans, woken_by=woken_by)
                for unit, orphans in units
            ),
            return_exceptions=True,
        )
        bugs: list[Exception] = []
        for (unit, _), result in zip(units, results, strict=True):
            if isinstance(result, Exception):
                record_failure(self.ctx, unit, desired.revision, str(result))
                bugs.append(result)
            elif isinstance(result, BaseException):
                raise result
        if bugs:
            raise bugs[0] if len(bugs) == 1 else ExceptionGroup("units failed", bugs)

    async def _unit(
        self, unit: tuple[str, ...], desired: Desired, *, orphans: bool, woken_by: str
    ) -> None:
        key = unit_key(unit)
        if self.schedule.held(key, desired.revision):
            return
        with log_context(clusters=key):
            await self._look(unit, key, desired, orphans=orphans, woken_by=woken_by)

    async def _look(
        self, unit: tuple[str, ...], key: str, desired: Desired, *, orphans: bool, woken_by: str
    ) -> None:
        async with self.ctx.locks.held(unit):
            try:
                look = await reconcile_unit(
                    self.ctx, unit, desired, orphans=orphans, woken_by=woken_by
                )
            except ShoalError as exc:
                record_failure(self.ctx, unit, desired.revision, str(exc))
                decision = self.schedule.failed(key, exc, desired.revision)
                self._log_failure("reconcile failed", exc, decision, clusters=key)
                return
        self._after_look(key, look, desired.revision)

    def _after_look(self, key: str, look: UnitLook, revision: str) -> None:
        """A host that could not be reached is a transport error the facts recorded instead of
        raising; its class decides when the unit is looked at again, like a raised one."""
        unreachable = {h: hp for h, hp in sorted(look.plan.hosts.items()) if not hp.reachable}
        self.metrics.hosts_unreachable(key, len(unreachable))
        if not unreachable:
            self.schedule.succeeded(key)
            return
        exc = HostUnreachable(
            ", ".join(unreachable),
            "; ".join(hp.unknown_reason or "unreachable" for hp in unreachable.values()),
        )
        decision = self.schedule.failed(key, exc, revision)
        self._log_failure("hosts unreachable", exc, decision, clusters=key)

    @property
    def metrics(self) -> ServerMetrics:
        return self.ctx.metrics

    # --- approvals (called by the API) ----------------------------------------------------------

    async def approve(
        self, plan_id: str, *, actor: str, comment: str = ""
    ) -> RunRecord | ApprovalRecorded:
        """Approve one pending plan and start applying it (`approvals.approve`); raises
        StaleApproval (409) if git or the hosts moved since it was made."""
        record = self.store.get_plan(plan_id)
        with log_context(plan_id=plan_id, clusters=record.cluster if record else None):
            return await approvals.approve(
                self.ctx, plan_id, actor=actor, comment=comment, start=self._start_apply
            )

    async def reject(self, plan_id: str, *, actor: str, comment: str = "") -> PlanRecord:
        return approvals.reject(self.ctx, plan_id, actor=actor, comment=comment)

    async def override_freeze(self, plan_id: str, *, actor: str, reason: str) -> FreezeOverride:
        return approvals.override_freeze(self.ctx, plan_id, actor=actor, reason=reason)

    async def hold_of(self, record: PlanRecord) -> Hold | None:
        """What keeps an open plan from starting now (a lock, a freeze), or None."""
        if record.state not in ("pending", "approved"):
            return None
        return apply_blocked(self.ctx, unit_of(record), await self.desired_at(record.revision),
                             record.id)  # fmt: skip

    # --- what the web pages show (called by the API) ---------------------------------------------

    async def describe(self, sha: str) -> CommitInfo | None:
        """Subject, author and date of a revision the source has fetched."""
        return await self.source.describe(sha)

    async def desired_at(self, sha: str) -> Desired | None:
        """The validated desired state at `sha` (cached), or None if it is invalid or unread."""
        try:
            return await self.ctx.load(sha)
        except ShoalError:
            return None

    def _start_apply(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._applies.add(task)
        task.add_done_callback(self._apply_done)

    def _apply_done(self, task: asyncio.Task[None]) -> None:
        self._applies.discard(task)
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, Exception):
            decision = retry_decision(exc, attempt=1, uniform=self.clock.uniform)
            self._log_failure("apply failed", exc, decision, task=task.get_name())
