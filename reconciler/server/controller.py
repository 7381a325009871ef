"""The watch loop: the server's one writer of plans, runs and cluster status.

Level-triggered, after controller-runtime: every pass reads the branch head from git and every
host's current facts, and decides from those alone. A webhook only wakes the loop; its payload
is never read. Wakes that arrive during a pass coalesce into one more pass.

A pass, per group of clusters that share hosts (a "unit", planned together so that two plans
never fight over one host):

    fetch head -> load + validate (invalid: record the errors, plan nothing, keep the last good
    plan) -> gather facts -> plan -> store, then by policy:
      empty plan, a host unread       not in sync: last_error names the host and why
      empty plan                      in sync; open plans are stale/superseded
      revision not applied yet        a pending plan (approval = "auto": applied at once)
      revision already applied        drift: reported (API + audit); drift = "heal": applied

Plan lifecycle: pending -> approved -> applying -> applied | failed (rolled back by the
executor); pending -> rejected | superseded (a newer revision) | stale (facts changed).
An approval is for one plan id. Before applying an approved plan the facts are gathered again;
a different digest makes the plan stale (HTTP 409) and a new plan is made. At start, a run left
`applying` by a crash is rolled back on every host it touched, confirmed phases included, from
the hosts' own backups, each host proven by its facts
(`reconciler.apply.recovery` has the policy and why), and marked interrupted; pending plans stay
pending.

One reconciliation per cluster at a time: every pass, approval and recovery holds the asyncio
locks of its clusters (taken in name order, so two units cannot deadlock).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.apply.executor import apply_plan
from reconciler.apply.recovery import backups as recovery_backups
from reconciler.apply.recovery import host_verdicts, restore_snapshots
from reconciler.apply.runresult import RunResult
from reconciler.cli.validate import issue_dicts
from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.errors import DesiredStateInvalid, SourceError
from reconciler.facts.gather import gather_facts
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.compile import managed_paths
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import Plan
from reconciler.server.lifecycle import PlanNotFound, PlanNotPending, StaleApproval
from reconciler.server.run_record import run_result_records
from reconciler.server.source import GitSource
from reconciler.server.store.database import Store
from reconciler.server.store.records import PlanKind, PlanRecord, RunRecord, utcnow
from reconciler.transport.connect import transport_for
from reconciler.transport.ssh import SSHTransport

log = logging.getLogger("shoal.controller")

ACTOR = "controller"
AUTO_APPROVER = "policy:approval=auto"
HEAL_APPROVER = "policy:drift=heal"
# drift = "heal" heals the same drift at most this often per window, then asks a person.
MAX_HEALS_PER_WINDOW = 3
HEAL_WINDOW = timedelta(hours=1)


# --- pure helpers ---------------------------------------------------------------------------------


def cluster_hosts(desired: Desired, name: str) -> set[str]:
    """Every host a cluster changes: directors, real servers, hosts of its [[state]]s."""
    cluster = desired.clusters[name]
    hosts = set(cluster.cluster.directors)
    for service in cluster.services:
        hosts.update(rs.host for rs in service.real_servers)
    for state in cluster.states:
        hosts.update(state.hosts)
    return hosts


def cluster_units(desired: Desired) -> list[tuple[str, ...]]:
    """Clusters grouped so that clusters sharing a host are in one unit (union-find)."""
    parent = {name: name for name in desired.clusters}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    owner: dict[str, str] = {}
    for name in sorted(desired.clusters):
        for host in cluster_hosts(desired, name):
            if host in owner:
                parent[find(name)] = find(owner[host])
            else:
                owner[host] = name
    groups: dict[str, list[str]] = {}
    for name in sorted(desired.clusters):
        groups.setdefault(find(name), []).append(name)
    return sorted(tuple(sorted(g)) for g in groups.values())


def unit_key(unit: Iterable[str]) -> str:
    return ",".join(sorted(unit))


def unit_of(record: PlanRecord) -> tuple[str, ...]:
    return tuple(record.cluster.split(","))


def restrict(desired: Desired, unit: Sequence[str]) -> Desired:
    """The desired state with only the unit's clusters (the planner sees nothing else)."""
    return desired.model_copy(update={"clusters": {c: desired.clusters[c] for c in unit}})


def orphan_hosts(desired: Desired) -> set[str]:
    """Inventory hosts in no cluster: gathered too, so what shoal left there is removed."""
    used: set[str] = set()
    for name in desired.clusters:
        used |= cluster_hosts(desired, name)
    return set(desired.inventory.hosts) - used


def unit_hosts(desired: Desired, unit: Sequence[str], *, with_orphans: bool) -> list[str]:
    """The hosts a unit's plan covers; orphans go to exactly one unit (the first)."""
    hosts: set[str] = set()
    for name in unit:
        hosts |= cluster_hosts(desired, name)
    if with_orphans:
        hosts |= orphan_hosts(desired)
    return sorted(hosts)


def derived_plan_id(base_id: str, generation: int) -> str:
    """A fresh id for a plan whose base id was already used (applied, stale...) before.

    The planner's id hashes revision, digests and steps; the same inputs come back when a host
    returns to an earlier state. A new record needs a new id, so that an approval of the old
    one can never apply the new one.
    """
    return hashlib.sha256(f"{base_id}/{generation}".encode()).hexdigest()[:16]


# --- the controller ---------------------------------------------------------------------------


class Controller:
    """Owns the watch loop, approvals, and crash recovery. Start with `start()`."""

    def __init__(
        self,
        *,
        source: GitSource,
        store: Store,
        client_key: Path,
        poll_interval: float = 60.0,
        poll_jitter: float = 0.1,
        stop_timeout: float = 120.0,
    ) -> None:
        self.source = source
        self.store = store
        self.client_key = client_key
        self.poll_interval = poll_interval
        self.poll_jitter = poll_jitter
        self.stop_timeout = stop_timeout
        self._wake = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}
        self._desired: OrderedDict[str, Desired | DesiredStateInvalid] = OrderedDict()
        self._loop_task: asyncio.Task[None] | None = None
        self._applies: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.ready = False
        self.recovered = False
        self.wake_requests = 0
        self.passes = 0
        self.passes_completed = 0
        self.last_pass_at: str | None = None
        self.last_source_error: str | None = None
        self.head: str | None = None
        self.head_errors: list[dict[str, Any]] = []

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
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
        await asyncio.to_thread(self.source.close)
        self.ready = False

    def wake(self, reason: str) -> None:
        """Ask for a pass soon; any number of wakes during a pass make one more pass."""
        self.wake_requests += 1
        log.info("wake requested", extra={"reason": reason})
        self._wake.set()

    async def wait_idle(self, timeout: float = 300.0) -> None:
        """Wait until no apply started by an approval is running (tests, graceful stop)."""
        if self._applies:
            await asyncio.wait(list(self._applies), timeout=timeout)

    async def _run(self) -> None:
        try:
            await self.recover()
        except Exception:
            log.exception("crash recovery failed")
        self.recovered = True
        self.ready = True
        while not self._stopping:
            # Cleared before the pass: a wake that lands during the pass keeps the event set,
            # so exactly one more pass follows, however many wakes there were.
            self._wake.clear()
            try:
                await self.reconcile_once()
            except Exception:
                log.exception("reconciliation pass failed")
            if self._stopping:
                break
            jitter = random.uniform(1 - self.poll_jitter, 1 + self.poll_jitter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval * jitter)

    # --- locks --------------------------------------------------------------------------------

    def _lock(self, cluster: str) -> asyncio.Lock:
        return self._locks.setdefault(cluster, asyncio.Lock())

    async def _acquire(self, unit: Sequence[str]) -> list[asyncio.Lock]:
        taken: list[asyncio.Lock] = []
        try:
            for name in sorted(unit):
                lock = self._lock(name)
                await lock.acquire()
                taken.append(lock)
        except BaseException:
            for lock in reversed(taken):
                lock.release()
            raise
        return taken

    @staticmethod
    def _release(locks: Sequence[asyncio.Lock]) -> None:
        for lock in reversed(locks):
            lock.release()

    @asynccontextmanager
    async def _locked(self, unit: Sequence[str]) -> AsyncIterator[None]:
        locks = await self._acquire(unit)
        try:
            yield
        finally:
            self._release(locks)

    # --- loading ------------------------------------------------------------------------------

    async def load(self, sha: str) -> Desired:
        """The validated desired state at `sha`; raises DesiredStateInvalid (both cached)."""
        cached = self._desired.get(sha)
        if cached is None:
            try:
                async with self.source.checkout(sha) as tree:
                    cached = await asyncio.to_thread(load_repository, tree, sha)
            except DesiredStateInvalid as exc:
                cached = exc
            self._desired[sha] = cached
            while len(self._desired) > 16:
                self._desired.popitem(last=False)
        self._desired.move_to_end(sha)
        if isinstance(cached, DesiredStateInvalid):
            raise cached
        return cached

    def _transport(self, desired: Desired) -> SSHTransport:
        return transport_for(desired, self.client_key)

    async def _gather(
        self, transport: SSHTransport, desired: Desired, hosts: Sequence[str]
    ) -> dict[str, HostFacts]:
        paths = managed_paths(desired)
        facts = await gather_facts(transport, list(hosts), {h: paths.get(h, []) for h in hosts})
        for name, host_facts in facts.items():
            # Fast local writes; kept for GET /hosts/{name}/facts.
            self.store.put_host_facts(
                name, host_facts.digest(), host_facts.model_dump(mode="json")
            )
        return facts

    # --- one pass -----------------------------------------------------------------------------

    async def reconcile_once(self) -> None:
        """One level-triggered pass over every cluster of the branch head."""
        self.passes += 1
        self.last_pass_at = utcnow()
        try:
            await self._pass()
        finally:
            self.passes_completed += 1

    async def _pass(self) -> None:
        try:
            sha = await self.source.fetch()
        except SourceError as exc:
            self.last_source_error = str(exc)
            log.warning("fetch failed", extra={"error": str(exc)})
            return
        self.last_source_error = None
        self.head = sha
        try:
            desired = await self.load(sha)
        except DesiredStateInvalid as exc:
            self._record_invalid(sha, exc)
            return
        self.head_errors = []
        if self.store.get_revision(sha) is None:
            self.store.record_revision(sha, valid=True, errors=[])
            self.store.audit("revision.valid", actor=ACTOR, detail={"revision": sha})
        for record in self.store.list_clusters():
            if record.name not in desired.clusters and record.last_error is None:
                self.store.update_cluster(
                    record.name,
                    head_revision=sha,
                    last_error=f"not in the repository at {sha[:12]} (nothing is removed)",
                )
        units = cluster_units(desired)
        await asyncio.gather(
            *(self._reconcile_unit(unit, desired, orphans=i == 0) for i, unit in enumerate(units))
        )

    def _record_invalid(self, sha: str, exc: DesiredStateInvalid) -> None:
        errors = issue_dicts(exc.issues)
        self.head_errors = errors
        first_time = self.store.get_revision(sha) is None
        self.store.record_revision(sha, valid=False, errors=errors)
        # Every known cluster shows the errors; none is planned and open plans are kept.
        known = {c.name for c in self.store.list_clusters()}
        for name in known:
            self.store.update_cluster(
                name, head_revision=sha, errors=errors, errors_revision=sha, checked_at=utcnow()
            )
        if first_time:
            self.store.audit(
                "revision.invalid",
                actor=ACTOR,
                detail={"revision": sha, "errors": [e["text"] for e in errors]},
            )
            log.warning(
                "invalid revision: nothing planned",
                extra={"revision": sha, "issues": len(errors)},
            )

    async def _reconcile_unit(
        self, unit: tuple[str, ...], desired: Desired, *, orphans: bool
    ) -> None:
        async with self._locked(unit):
            try:
                await self._reconcile_unit_locked(unit, desired, orphans=orphans)
            except Exception as exc:
                log.exception("reconcile failed", extra={"clusters": unit_key(unit)})
                for name in unit:
                    self.store.update_cluster(
                        name,
                        head_revision=desired.revision,
                        last_error=str(exc),
                        checked_at=utcnow(),
                    )

    async def _reconcile_unit_locked(
        self, unit: tuple[str, ...], desired: Desired, *, orphans: bool
    ) -> PlanRecord | None:
        sub = restrict(desired, unit)
        transport = self._transport(desired)
        try:
            hosts = unit_hosts(desired, unit, with_orphans=orphans)
            facts = await self._gather(transport, sub, hosts)
            plan = plan_desired(sub, facts)
            return await self._decide(unit, sub, plan, transport, facts)
        finally:
            await transport.aclose()

    def _open_plans(self, unit: Sequence[str]) -> list[PlanRecord]:
        seen: dict[str, PlanRecord] = {}
        for name in unit:
            for record in self.store.list_plans(cluster=name, states=("pending",)):
                seen[record.id] = record
        return list(seen.values())

    def _close_plan(self, record: PlanRecord, revision: str, why: str) -> None:
        if record.revision != revision:
            state, reason = "superseded", f"revision {revision[:12]} is newer"
        else:
            state, reason = "stale", why
        self._mark(record, state, reason, ACTOR)

    async def _decide(
        self,
        unit: tuple[str, ...],
        desired: Desired,
        plan: Plan,
        transport: SSHTransport,
        facts: Mapping[str, HostFacts] | None = None,
    ) -> PlanRecord | None:
        sha = desired.revision
        key = unit_key(unit)
        now = utcnow()
        records = [self.store.get_cluster(name) for name in unit]
        already_applied = all(r is not None and r.applied_revision == sha for r in records)
        had_drift = any(r is not None and r.drift for r in records)
        common: dict[str, Any] = {
            "head_revision": sha,
            "errors": [],
            "errors_revision": None,
            "last_error": None,
            "checked_at": now,
        }

        # A host whose facts could not be read has no step, yet is not known to be in sync:
        # the cluster is recorded out of sync, naming the host and why, and nothing runs.
        if plan.empty and plan.unread:
            for name in unit:
                self.store.update_cluster(
                    name, in_sync=False, **{**common, "last_error": "; ".join(plan.unread.values())}
                )
            return None
        # A host refused for breaking a safety rule is not in sync, even with no step to run.
        if plan.empty and not plan.refused:
            for record in self._open_plans(unit):
                self._close_plan(record, sha, "the hosts already match this revision")
            for name in unit:
                self.store.update_cluster(
                    name, applied_revision=sha, in_sync=True, drift=None, **common
                )
            if had_drift:
                self.store.audit(
                    "drift.cleared", actor=ACTOR, cluster=key, detail={"revision": sha}
                )
            return None

        for record in self._open_plans(unit):
            if record.base_id != plan.id:
                self._close_plan(record, sha, "the hosts' facts changed since it was made")

        kind: PlanKind = "drift" if already_applied else "change"
        current = self._current_plan(key, plan, kind)

        drift: dict[str, Any] | None = None
        if kind == "drift":
            hosts = sorted(h for h, hp in plan.hosts.items() if hp.steps or hp.violations)
            drift = {"hosts": hosts, "plan_id": current.id, "revision": sha, "detected_at": now}
            if plan.refused:
                # The same words as the plan's: what breaks the safety rules, and where.
                drift["violations"] = {h: list(v) for h, v in plan.refused.items()}
            previous = next((r.drift for r in records if r is not None and r.drift), None)
            if previous is None or previous.get("plan_id") != current.id:
                self.store.audit(
                    "drift.detected",
                    actor=ACTOR,
                    cluster=key,
                    plan_id=current.id,
                    detail={"hosts": hosts, "revision": sha,
                            **({"violations": drift["violations"]} if plan.refused else {})},
                )  # fmt: skip
                log.warning("drift detected", extra={"clusters": key, "hosts": hosts})
            else:
                drift["detected_at"] = previous.get("detected_at", now)
        elif had_drift:
            self.store.audit("drift.cleared", actor=ACTOR, cluster=key, detail={"revision": sha})
        for name in unit:
            self.store.update_cluster(
                name,
                planned_revision=sha,
                last_plan_id=current.id,
                in_sync=False,
                drift=drift,
                **common,
            )

        if current.state != "pending" or plan.empty:
            return current  # nothing shoal may run: only refused hosts are out of sync
        if kind == "change" and all(desired.approval_for(c) == "auto" for c in unit):
            await self._approve_and_apply(current, desired, transport, AUTO_APPROVER, facts)
        elif kind == "drift" and all(desired.drift_for(c) == "heal" for c in unit):
            since = (datetime.now(UTC) - HEAL_WINDOW).isoformat(timespec="milliseconds")
            recent_heals = [
                r
                for r in self.store.list_plans(base_id=plan.id, limit=1000)
                if r.kind == "drift" and r.id != current.id and r.updated_at >= since
            ]
            if len(recent_heals) >= MAX_HEALS_PER_WINDOW:
                # The same drift keeps coming back (something on the host fights us, or an
                # apply does not converge): stop healing it and leave the plan to a person.
                self.store.audit(
                    "drift.heal_repeated",
                    actor=ACTOR,
                    cluster=key,
                    plan_id=current.id,
                    detail={"heals_in_window": len(recent_heals)},
                )
            else:
                await self._approve_and_apply(current, desired, transport, HEAL_APPROVER, facts)
        return self.store.get_plan(current.id)

    def _current_plan(self, key: str, plan: Plan, kind: PlanKind) -> PlanRecord:
        """The stored plan for this exact plan: the open one, a failed/rejected one, or new."""
        existing = self.store.list_plans(base_id=plan.id, limit=1000)
        for record in existing:
            if record.state in ("pending", "approved", "applying"):
                return record
        for record in existing:
            # A person rejected it, or it failed and was rolled back: the same plan is not
            # proposed again until git or the hosts change (no retry loop on one commit).
            if record.state in ("failed", "rejected") and record.cluster == key:
                return record
        plan_id = plan.id if not existing else derived_plan_id(plan.id, len(existing))
        stored = plan if plan_id == plan.id else plan.model_copy(update={"id": plan_id})
        record = self.store.add_plan(stored, cluster=key, kind=kind, base_id=plan.id)
        changed = sorted(h for h, hp in plan.hosts.items() if hp.steps)
        self.store.audit(
            "plan.created",
            actor=ACTOR,
            cluster=key,
            plan_id=record.id,
            detail={"revision": plan.revision, "kind": kind, "hosts": changed},
        )
        log.info(
            "plan created",
            extra={"plan_id": record.id, "clusters": key, "revision": plan.revision, "kind": kind},
        )
        return record

    # --- applying -----------------------------------------------------------------------------

    async def _approve_and_apply(
        self,
        record: PlanRecord,
        desired: Desired,
        transport: SSHTransport,
        actor: str,
        facts: Mapping[str, HostFacts] | None = None,
    ) -> None:
        run = self.store.approve_and_start_run(record.id, actor=actor, comment="by policy")
        if run is None:
            return
        self.store.audit("plan.approved", actor=actor, cluster=record.cluster, plan_id=record.id)
        await self._execute(run, record, desired, transport, facts)

    async def _execute(
        self,
        run: RunRecord,
        record: PlanRecord,
        desired: Desired,
        transport: SSHTransport,
        facts: Mapping[str, HostFacts] | None = None,
    ) -> None:
        """Apply `record`'s plan. `facts`: just gathered on `transport` (the plan's own, or those
        the approval's stale check read), so the executor does not read the hosts again."""
        self.store.audit(
            "run.started", actor=run.actor, cluster=record.cluster, plan_id=record.id, run_id=run.id
        )
        log.info("applying", extra={"plan_id": record.id, "run_id": run.id})
        try:
            result: RunResult = await apply_plan(record.plan, desired, transport, facts=facts)
        except (asyncio.CancelledError, KeyboardInterrupt):
            # Left `applying` on purpose: the next start rolls it back (crash recovery).
            raise
        except Exception as exc:
            log.exception("apply raised", extra={"plan_id": record.id, "run_id": run.id})
            self.store.finish_run(
                run.id,
                ok=False,
                plan_state="failed",
                run_state="failed",
                result=None,
                error=f"{type(exc).__name__}: {exc}",
            )
            self.store.audit(
                "run.failed", actor=ACTOR, cluster=record.cluster, plan_id=record.id, run_id=run.id
            )
            return
        steps, backups, summary = run_result_records(result)
        self.store.add_step_results(run.id, steps)
        for backup in backups:
            self.store.add_backup(run.id, record.id, backup.host, backup.location, backup.detail)
        self.store.finish_run(
            run.id,
            ok=result.ok,
            plan_state="applied" if result.ok else "failed",
            run_state="applied" if result.ok else "failed",
            result=summary,
            error=None if result.ok else summary.get("error"),
        )
        if result.ok:
            for name in unit_of(record):
                self.store.update_cluster(
                    name, applied_revision=record.revision, in_sync=True, drift=None
                )
        self.store.audit(
            "run.applied" if result.ok else "run.failed",
            actor=ACTOR,
            cluster=record.cluster,
            plan_id=record.id,
            run_id=run.id,
            detail={"ok": result.ok},
        )
        log.info("run finished", extra={"plan_id": record.id, "run_id": run.id, "ok": result.ok})

    # --- approvals (called by the API) ----------------------------------------------------------

    def _pending(self, plan_id: str) -> PlanRecord:
        record = self.store.get_plan(plan_id)
        if record is None:
            raise PlanNotFound(plan_id)
        if record.state != "pending":
            raise PlanNotPending(plan_id, record.state)
        return record

    def _no_longer_pending(self, plan_id: str) -> PlanNotPending:
        """The error for a plan another request decided between our check and our write."""
        current = self.store.get_plan(plan_id)
        return PlanNotPending(plan_id, current.state if current else "missing")

    def _audit_decision(
        self,
        action: str,
        record: PlanRecord,
        actor: str,
        comment: str,
        run_id: str | None = None,
    ) -> None:
        self.store.audit(
            action,
            actor=actor,
            cluster=record.cluster,
            plan_id=record.id,
            run_id=run_id,
            detail={"comment": comment},
        )

    async def approve(self, plan_id: str, *, actor: str, comment: str = "") -> RunRecord:
        """Approve one pending plan and start applying it; raises StaleApproval (409) if git
        or the hosts moved since it was made. Returns the started run (apply continues in the
        background; GET /runs/{id} follows it)."""
        record = self._pending(plan_id)
        unit = unit_of(record)
        locks = await self._acquire(unit)
        transport: SSHTransport | None = None
        handed_off = False
        try:
            record = self._pending(plan_id)
            head = await self.source.fetch()
            if head != record.revision:
                reason = f"the branch moved to {head[:12]}"
                self._mark(record, "superseded", reason, actor)
                self.wake("approval of a superseded plan")
                raise StaleApproval(plan_id, [], reason, None)
            desired = restrict(await self.load(record.revision), unit)
            transport = self._transport(desired)
            facts = await self._gather(transport, desired, sorted(record.plan.hosts))
            changed = sorted(
                host
                for host, hp in record.plan.hosts.items()
                if host not in facts or facts[host].digest() != hp.facts_digest
            )
            if changed:
                reason = f"facts changed on {', '.join(changed)}"
                self._mark(record, "stale", reason, actor)
                await transport.aclose()
                transport = None
                full = await self.load(record.revision)
                new = await self._reconcile_unit_locked(
                    unit, full, orphans=unit == cluster_units(full)[0]
                )
                raise StaleApproval(plan_id, changed, reason, new.id if new else None)
            run = self.store.approve_and_start_run(plan_id, actor=actor, comment=comment)
            if run is None:
                raise self._no_longer_pending(plan_id)
            self._audit_decision("plan.approved", record, actor, comment, run_id=run.id)
            task = asyncio.create_task(
                self._execute_then_release(run, record, desired, transport, locks, facts),
                name=f"shoal-apply-{plan_id}",
            )
            self._applies.add(task)
            task.add_done_callback(self._applies.discard)
            handed_off = True
            return run
        finally:
            if not handed_off:
                if transport is not None:
                    await transport.aclose()
                self._release(locks)

    async def _execute_then_release(
        self,
        run: RunRecord,
        record: PlanRecord,
        desired: Desired,
        transport: SSHTransport,
        locks: list[asyncio.Lock],
        facts: Mapping[str, HostFacts] | None = None,
    ) -> None:
        try:
            await self._execute(run, record, desired, transport, facts)
        finally:
            try:
                await transport.aclose()
            finally:
                self._release(locks)

    def _mark(self, record: PlanRecord, state: str, reason: str, actor: str) -> None:
        if self.store.transition_plan(record.id, ("pending",), state, reason=reason):  # type: ignore[arg-type]
            self.store.audit(
                f"plan.{state}",
                actor=actor,
                cluster=record.cluster,
                plan_id=record.id,
                detail={"reason": reason},
            )

    async def reject(self, plan_id: str, *, actor: str, comment: str = "") -> PlanRecord:
        record = self._pending(plan_id)
        if not self.store.decide_plan(plan_id, decision="reject", actor=actor, comment=comment):
            raise self._no_longer_pending(plan_id)
        self._audit_decision("plan.rejected", record, actor, comment)
        rejected = self.store.get_plan(plan_id)
        assert rejected is not None
        return rejected

    # --- crash recovery -----------------------------------------------------------------------

    async def recover(self) -> None:
        """Find runs a crash left `applying`; roll their hosts back; mark them interrupted."""
        for run in self.store.list_runs(state="applying", limit=10_000):
            await self._recover_run(run)

    async def _recover_run(self, run: RunRecord) -> None:
        record = self.store.get_plan(run.plan_id)
        if record is None:
            return
        unit = unit_of(record)
        detail: dict[str, Any] = {}
        log.warning("recovering interrupted run", extra={"run_id": run.id, "plan_id": record.id})
        async with self._locked(unit):
            try:
                detail = await self._restore_hosts(record, run.id)
            except Exception as exc:
                log.exception("recovery of run failed", extra={"run_id": run.id})
                detail["error"] = f"{type(exc).__name__}: {exc}"
            self.store.finish_run(
                run.id,
                ok=False,
                plan_state="interrupted",
                run_state="interrupted",
                result=None,
                error="the server stopped while this run was applying",
                recovery=detail,
            )
        self.store.audit(
            "run.interrupted",
            actor=ACTOR,
            cluster=record.cluster,
            plan_id=record.id,
            run_id=run.id,
            detail=detail,
        )

    async def _restore_hosts(self, record: PlanRecord, run_id: str) -> dict[str, Any]:
        """Roll every host of the plan back from its on-host backups (`reconciler.apply.recovery`:
        confirmed phases too), index the backups found, and prove each host by its facts."""
        full = await self.load(record.revision)
        desired = restrict(full, unit_of(record))
        plan = record.plan
        transport = self._transport(desired)
        try:
            phases = await restore_snapshots(plan, transport)
            for p in recovery_backups(phases):
                self.store.add_backup(
                    run_id, record.id, p.host, p.backup, {**p.as_dict(), "recovery": True}
                )
            everything = unit_hosts(full, unit_of(record), with_orphans=True)
            hosts_read = sorted(set(everything) | set(plan.hosts))
            facts = await self._gather(transport, desired, hosts_read)
            fresh = plan_desired(desired, facts)
            hosts = host_verdicts(plan, phases, facts, fresh)
        finally:
            await transport.aclose()
        at_pre = sorted(h for h, v in hosts.items() if v["state"] in ("restored", "untouched"))
        return {
            "policy": "roll back every host of the run, confirmed phases included",
            "outcome": "rolled_back" if len(at_pre) == len(hosts) else "unproven",
            "hosts": hosts,
            "hosts_at_pre_apply_state": at_pre,
            "hosts_unknown": sorted(h for h, v in hosts.items() if v["state"] == "unknown"),
        }
