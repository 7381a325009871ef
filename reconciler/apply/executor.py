"""Applying a plan: phases in order, real servers in batches, every host backed up and provable.

For each phase (DIRECTOR_BACKUP before DIRECTOR_PRIMARY, see `Phase`) and each host in it, the
executor sends ONE script over ONE SSH channel (`reconciler.apply.hostscript`): it snapshots
what the phase touches, arms the lock-out timer when the phase can cut the controller off, runs the
steps, and restores itself when a step fails. After a phase that armed the timer the controller
confirms over a NEW connection; a confirmation that cannot get through means the host is
restoring itself.

Every rollback, wherever it ran, is followed by a proof: the snapshot is taken again and must
equal the one from before (raw outputs), and the facts gathered again must have the digest they
had before the phase. A rollback without that proof is reported loudly (RollbackReport.proven
False, logged at ERROR, `RunResult.raise_for_errors` raises RollbackError).

Batches: real-server phases change `settings.apply.batch_size` hosts at a time; a failure stops
the rollout, rolls back the rest of its batch, and the finished batches of that phase are kept
or rolled back by `settings.apply.finished_batches`. Other phases run their hosts together as
one batch.

Verification: when every phase applied and `settings.verify` names clients, the run ends with
`reconciler.verify.run.verify_desired` over the plan's clusters (real requests through each VIP,
ARP from the clients). Its result, with the traffic distribution, is `RunResult.verification`;
a failure fails the run like a failed step: every host phase that changed is rolled back (latest
phase and batch first, so the directors stop sending to a real server before it is undone),
each rollback proven, and the run's errors name the check and the host at fault.

Staleness is the caller's business: apply_plan applies the plan it is given (the controller
re-plans from fresh facts first, `shoal apply` plans right before applying). A caller that has
just gathered the facts on the same transport hands them over (`facts=`): each host is then
read once per apply, not once for the plan and again here.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from reconciler.apply import hostscript as hs
from reconciler.apply.phaselog import CommandRun, PhaseLog, compare_sections, parse_log
from reconciler.apply.runresult import (
    HostPhaseRun,
    RollbackReport,
    RunError,
    RunResult,
    SnapshotSection,
    StepResult,
)
from reconciler.desired.models import ApplySettings, Desired
from reconciler.errors import ShoalError, StalePlan
from reconciler.facts.gather import gather_facts
from reconciler.facts.hostfacts import HostFacts
from reconciler.facts.script import IPVS_MODULE_DEFAULTS
from reconciler.plan.compile import managed_paths
from reconciler.plan.steps import Phase, Plan, Step
from reconciler.transport.protocol import Transport
from reconciler.verify.run import verify_desired

logger = logging.getLogger(__name__)

REAL_SERVER_PHASES = frozenset({Phase.REAL_SERVERS_PREPARE, Phase.REAL_SERVERS_CLEANUP})
CONFIRM_TIMEOUT = 30.0
_OUTPUT_LIMIT = 8000  # characters of one step's output kept in its result
# Which verification failure a run names first: the likeliest cause of the others.
_CHECK_ORDER = ("setup", "director", "arp", "neighbour", "probe", "traffic")


EventKind = Literal[
    "start", "phase", "host-start", "step", "host-done", "rollback", "wait", "verify", "done"
]


@dataclass(frozen=True, slots=True)
class ApplyEvent:
    """Progress for a display: what is happening, on which host and phase."""

    kind: EventKind
    phase: str | None = None
    host: str | None = None
    message: str = ""
    ok: bool | None = None
    step: StepResult | None = None
    rollback: RollbackReport | None = None


EventHandler = Callable[[ApplyEvent], None]


def phase_name(phase: Phase) -> str:
    return phase.name.lower()


def batches(phase: Phase, hosts: Sequence[str], batch_size: int) -> list[list[str]]:
    """Real servers change `batch_size` at a time; every other phase is one batch."""
    ordered = list(hosts)
    if phase not in REAL_SERVER_PHASES:
        return [ordered] if ordered else []
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


# --- facts comparison --------------------------------------------------------------------------


def _stable_facts(facts: HostFacts) -> dict[str, Any]:
    """Facts without what changes on its own (IPVS connection counters), and with an empty
    IPVS table the same whether ip_vs is loaded or not: a phase may load the module (states.kmod,
    never unloaded), which creates its net.ipv4.vs.* keys at their defaults and carries nothing."""
    data: dict[str, Any] = facts.model_dump(mode="json")
    ipvs = data.get("ipvs", {}).get("value")
    if isinstance(ipvs, dict):
        for dest in ipvs.get("destinations", []):
            dest["active_connections"] = None
            dest["inactive_connections"] = None
        if not ipvs.get("services") and not ipvs.get("destinations"):
            ipvs["loaded"], ipvs["detail"] = None, None
            sysctls = data.get("sysctls", {}).get("value")
            if isinstance(sysctls, dict):
                for key, default in IPVS_MODULE_DEFAULTS.items():
                    if sysctls.get(key) == default:
                        del sysctls[key]
    return data


def stable_digest(facts: HostFacts) -> str:
    body = json.dumps(_stable_facts(facts), sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def facts_differences(before: HostFacts, after: HostFacts) -> list[str]:
    """Readable differences between two hosts' facts, one entry per fact."""
    b, a = _stable_facts(before), _stable_facts(after)
    out: list[str] = []
    for name in sorted(set(b) | set(a)):
        if b.get(name) == a.get(name):
            continue
        lines = difflib.unified_diff(
            json.dumps(b.get(name), indent=1, sort_keys=True).splitlines(),
            json.dumps(a.get(name), indent=1, sort_keys=True).splitlines(),
            "before",
            "after",
            lineterm="",
            n=1,
        )
        out.append(f"fact {name} differs:\n" + "\n".join(list(lines)[:60]))
    return out


# --- turning a phase log into results ----------------------------------------------------------


@dataclass
class _Outcome:
    hp: hs.HostPhase
    batch: int
    pre_facts: HostFacts
    log: PhaseLog = field(default_factory=PhaseLog)
    ok: bool = False
    record: HostPhaseRun | None = None
    results: list[StepResult] = field(default_factory=list)
    rollback: RollbackReport | None = None
    error: RunError | None = None
    interrupted: bool = False


def _argv_text(argv: Sequence[str]) -> str:
    return " ".join(argv)


def _command_argv(hp: hs.HostPhase, run: CommandRun) -> str:
    step = hp.steps[run.step]
    kind = run.name.split(".")[0]
    if kind == "c" and run.index < len(step.commands):
        return _argv_text(step.commands[run.index])
    if kind == "u" and run.index < len(step.undo):
        return _argv_text(step.undo[run.index])
    if kind == "r" and run.index < len(step.after_rollback):
        return _argv_text(step.after_rollback[run.index])
    if kind == "w":
        return f"write {hp.targets.files[run.index]}"
    return run.name


def _clip(text: str) -> str:
    return text if len(text) <= _OUTPUT_LIMIT else text[:_OUTPUT_LIMIT] + "\n[...]"


def _step_results(hp: hs.HostPhase, log: PhaseLog, why_not_run: str) -> list[StepResult]:
    out: list[StepResult] = []
    phase = phase_name(hp.phase)
    for i, step in enumerate(hp.steps):
        base: dict[str, Any] = {
            "id": step.id,
            "name": step.description or step.state_id,
            "host": hp.host,
            "phase": phase,
            "function": step.function,
        }
        run = log.steps.get(i)
        if run is None or (run.started is None and not run.commands and not run.writes):
            out.append(StepResult(result=None, comment=why_not_run, **base))
            continue
        runs = [*run.writes, *run.commands]
        output = "\n".join(
            f"$ {_command_argv(hp, r)}  (exit {r.rc})\n{r.output}".rstrip() for r in runs
        )
        failed = next((r for r in runs if r.rc != 0), None)
        if run.rc == 0 and failed is None:
            comment = "applied"
            if step.drain is not None:
                left = run.drain_remaining or 0
                comment += (
                    f"; drained in {run.drain_waited}s"
                    if left == 0
                    else f"; drain timed out after {run.drain_waited}s with {left} connections"
                )
            out.append(
                StepResult(
                    result=True,
                    changes={"before": step.change.before, "after": step.change.after},
                    comment=comment,
                    output=_clip(output),
                    duration=run.duration,
                    exit_status=0,
                    **base,
                )
            )
            continue
        if failed is not None and failed.rc in hs.TIMEOUT_STATUSES:
            comment = f"timed out after {hp.command_seconds}s: {_command_argv(hp, failed)}"
        elif failed is not None:
            comment = f"{_command_argv(hp, failed)} exited {failed.rc}"
        else:
            comment = "interrupted before the step finished"
        out.append(
            StepResult(
                result=False,
                comment=comment,
                output=_clip(output),
                duration=run.duration,
                exit_status=failed.rc if failed is not None else None,
                **base,
            )
        )
    return out


def _restored(hp: hs.HostPhase, log: PhaseLog) -> list[str]:
    out: list[str] = []
    for rb in log.rollbacks:
        for u in rb.undo:
            status = "ok" if u.rc == 0 else f"exit {u.rc} (tolerated)"
            what = "after the restores, ran again" if u.name.startswith("r.") else "undo"
            out.append(f"{what} {_command_argv(hp, u)}: {status}")
        for k, rc in rb.files:
            path = hp.targets.files[k] if k < len(hp.targets.files) else f"file {k}"
            out.append(f"restored {path}: {'ok' if rc == 0 else f'exit {rc}'}")
        out.extend(f"dropped empty table {t} created by the phase" for t in rb.dropped_tables)
    return out


def _merge(base: PhaseLog, extra: PhaseLog) -> PhaseLog:
    """A log continued by a later script (confirm, recover, status) about the same phase."""
    if extra.nonce and base.nonce and extra.nonce != base.nonce:
        return base
    base.pre = base.pre or extra.pre
    base.post = extra.post or base.post
    for i, run in extra.steps.items():
        base.steps.setdefault(i, run)
    base.begun = base.begun or extra.begun
    base.end = base.end or extra.end
    if base.failed_step is None:
        base.failed_step, base.failed_rc = extra.failed_step, extra.failed_rc
    base.lockout += [e for e in extra.lockout if e not in base.lockout]
    if not base.rolled_back:
        base.rollbacks += extra.rollbacks
    base.aborted = base.aborted or extra.aborted
    base.confirm = extra.confirm or base.confirm
    base.restore_by = extra.restore_by or base.restore_by
    base.stray += extra.stray
    return base


# --- the run -----------------------------------------------------------------------------------


class _Run:
    def __init__(
        self,
        plan: Plan,
        desired: Desired,
        transport: Transport,
        on_event: EventHandler | None,
        check_stale: bool,
        facts: Mapping[str, HostFacts] | None = None,
    ) -> None:
        self.check_stale = check_stale
        self.given_facts = facts
        self.plan = plan
        self.desired = desired
        self.settings: ApplySettings = desired.settings.apply
        self.transport = transport
        self.on_event = on_event
        # The planner's own file list, so digests compare with the plan's (files a step writes
        # outside it are still covered by the raw snapshot).
        self.paths = managed_paths(desired)
        self.facts: dict[str, HostFacts] = {}
        self.dirty: set[str] = set()
        # Every batch that applied, in order: what a failed verification rolls back.
        self.applied: list[list[_Outcome]] = []
        self.result = RunResult(
            plan_id=plan.id, revision=plan.revision, ok=True, started_at=datetime.now(UTC)
        )

    def emit(self, event: ApplyEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    async def gather(self, hosts: list[str]) -> dict[str, HostFacts]:
        if not hosts:
            return {}
        paths = {h: self.paths.get(h, []) for h in hosts}
        return await gather_facts(self.transport, hosts, paths)

    # --- one host, one phase ---

    def host_phase(self, host: str, phase: Phase, steps: tuple[Step, ...]) -> hs.HostPhase:
        lockout = self.settings.lockout_timeout if hs.needs_lockout(steps) else None
        return hs.HostPhase(
            plan_id=self.plan.id,
            phase=phase,
            host=host,
            steps=steps,
            nonce=secrets.token_hex(8),
            command_timeout=self.settings.command_timeout,
            lockout_timeout=lockout,
        )

    async def run_host(self, out: _Outcome) -> _Outcome:
        hp = out.hp
        phase = phase_name(hp.phase)
        self.emit(ApplyEvent("host-start", phase, hp.host, f"{len(hp.steps)} steps"))
        try:
            res = await self.transport.run_script(
                hp.host, hs.build_phase_script(hp), timeout=hp.budget()
            )
            out.log = parse_log(str(res.stdout) + str(res.stderr))
        except ShoalError as exc:
            # The channel is gone; the host goes on alone (and restores itself on failure).
            out.interrupted = True
            out.error = RunError(
                kind="Interrupted", host=hp.host, phase=phase, message=f"lost the phase: {exc}"
            )
            await self.recover(out, str(exc))
            return self.finish_host(out)
        if out.log.busy:
            out.error = RunError(
                kind="Busy",
                host=hp.host,
                phase=phase,
                message="an earlier attempt of this plan is still running or armed on the host",
            )
            return self.finish_host(out)
        if out.log.end == "ok" and hp.lockout_timeout:
            await self.confirm(out)
        elif out.log.end == "ok":
            out.ok = True
        elif out.log.end == "failed":
            out.error = self.step_error(out)
        else:
            out.interrupted = True
            out.error = RunError(
                kind="Interrupted",
                host=hp.host,
                phase=phase,
                message="the phase stopped without reporting its end"
                + (f": {out.log.stray.strip()[-300:]}" if out.log.stray.strip() else ""),
            )
            await self.recover(out, "the phase stopped without reporting its end")
        return self.finish_host(out)

    def step_error(self, out: _Outcome) -> RunError:
        hp, log = out.hp, out.log
        i = log.failed_step
        if i is None or i < 0 or i >= len(hp.steps):
            msg = "the lock-out timer could not be armed; no step ran" if i == -1 else "failed"
            return RunError(
                kind="ApplyError", host=hp.host, phase=phase_name(hp.phase), message=msg
            )
        results = _step_results(hp, log, "")
        return RunError(
            kind="ApplyError",
            host=hp.host,
            phase=phase_name(hp.phase),
            step_id=hp.steps[i].id,
            message=results[i].comment,
        )

    async def confirm(self, out: _Outcome) -> None:
        """Confirm over a NEW connection; if that fails, the host is locked out and heals."""
        hp = out.hp
        script = hs.build_confirm_script(hp.plan_id, hp.phase)
        try:
            res = await self.transport.run_script_fresh(hp.host, script, timeout=CONFIRM_TIMEOUT)
        except ShoalError as exc:
            out.error = RunError(
                kind="ApplyError",
                host=hp.host,
                phase=phase_name(hp.phase),
                message=f"no new SSH connection after the phase (lock-out?): {exc}",
            )
            await self.recover(out, f"confirmation over a new connection failed: {exc}")
            return
        clog = parse_log(str(res.stdout))
        _merge(out.log, clog)
        if clog.confirm == "confirmed":
            out.ok = True
            return
        out.error = RunError(
            kind="ApplyError",
            host=hp.host,
            phase=phase_name(hp.phase),
            message=f"the lock-out timer restored the host before the confirmation "
            f"({clog.confirm or 'no answer'})",
        )

    async def recover(self, out: _Outcome, why: str) -> None:
        """Reach the host again, stop the phase if it still runs, and restore it.

        When the host cannot be reached and the phase armed the lock-out timer, wait for the
        timer's deadline once, then try again.
        """
        hp = out.hp
        script = hs.build_recover_script(hp.plan_id, hp.phase)
        attempts = 2 if hp.lockout_timeout else 1
        for attempt in range(attempts):
            try:
                res = await self.transport.run_script_fresh(hp.host, script, timeout=hp.budget())
            except ShoalError as exc:
                if attempt + 1 < attempts:
                    wait = float((hp.lockout_timeout or 0) + 3)
                    self.emit(
                        ApplyEvent(
                            "wait",
                            phase_name(hp.phase),
                            hp.host,
                            f"unreachable ({exc}); its lock-out timer restores it, "
                            f"waiting {wait:g}s",
                        )
                    )
                    await asyncio.sleep(wait)
                    continue
                out.interrupted = True
                out.rollback = RollbackReport(
                    host=hp.host,
                    phase=phase_name(hp.phase),
                    by="pending",
                    reason=f"{why}; host unreachable ({exc})",
                    proven=None,
                    differences=[
                        "not checked: the host could not be reached; "
                        + (
                            f"its lock-out timer restores it {hp.lockout_timeout}s after "
                            "its last step"
                            if hp.lockout_timeout
                            else "it finishes the phase alone and restores itself only if "
                            "a step fails"
                        )
                    ],
                )
                return
            _merge(out.log, parse_log(str(res.stdout)))
            if out.log.missing:
                # The phase never started there: nothing to restore.
                out.rollback = None
            return

    def finish_host(self, out: _Outcome) -> _Outcome:
        hp, log = out.hp, out.log
        phase = phase_name(hp.phase)
        why = "not run: an earlier step failed" if log.begun else "not run"
        if out.error is not None and out.error.kind == "Busy":
            why = "not run: " + out.error.message
        out.results = _step_results(hp, log, why)
        if log.rolled_back:
            for r in out.results:
                if r.result:
                    r.rolled_back = True
                    r.comment += "; rolled back"
        lockout: Literal["none", "confirmed", "fired", "unconfirmed", "failed"] = "none"
        if any(e.startswith("fired") for e in log.lockout):
            lockout = "fired"
        elif any(e.startswith("failed") for e in log.lockout):
            lockout = "failed"
        elif log.confirm == "confirmed":
            lockout = "confirmed"
        elif any(e.startswith("armed") for e in log.lockout):
            lockout = "unconfirmed"
        t = hp.targets
        out.record = HostPhaseRun(
            host=hp.host,
            phase=phase,
            batch=out.batch,
            ok=out.ok,
            backup_dir=hp.dir,
            snapshot={
                k: SnapshotSection(exit_status=v.rc, content=v.content) for k, v in log.pre.items()
            },
            snapshot_files=list(t.files),
            snapshot_interfaces=list(t.interfaces or ()),
            lockout=lockout,
            comment=out.error.message if out.error else "",
        )
        for r in out.results:
            self.emit(ApplyEvent("step", phase, hp.host, r.comment, r.result, step=r))
        return out

    # --- rollback and proof ---

    async def rollback_finished(self, out: _Outcome, reason: str) -> None:
        """Undo a phase that succeeded (its batch, or a finished batch, failed later)."""
        hp = out.hp
        try:
            res = await self.transport.run_script(
                hp.host, hs.build_rollback_script(hp.plan_id, hp.phase), timeout=hp.budget()
            )
        except ShoalError as exc:
            report = RollbackReport(
                host=hp.host,
                phase=phase_name(hp.phase),
                by="controller",
                reason=reason,
                proven=False,
                differences=[f"the rollback could not run: {exc}"],
            )
            self.add_rollback(report)
            return
        rlog = parse_log(str(res.stdout))
        out.log.rollbacks.extend(rlog.rollbacks)
        out.log.post = rlog.post
        for r in out.results:
            if r.result:
                r.rolled_back = True
                r.comment += "; rolled back"
        await self.prove(out, rlog, "controller", reason)

    async def prove(self, out: _Outcome, log: PhaseLog, by: str, reason: str) -> None:
        hp = out.hp
        report = RollbackReport(
            host=hp.host,
            phase=phase_name(hp.phase),
            by=by,
            reason=reason,
            restored=_restored(hp, log),
            digest_before=stable_digest(out.pre_facts),
        )
        diffs: list[str] = []
        if not log.rolled_back:
            diffs.append("the rollback did not report its end")
        # Steps that touch nothing a snapshot holds (starting a daemon, installing a package,
        # loading a module) have an empty snapshot on both sides: the facts alone prove those.
        snapshotted = bool(hp.targets.section_names())
        if snapshotted and not out.log.pre:
            diffs.append("no snapshot from before the phase")
        elif snapshotted and not log.post:
            diffs.append("no snapshot after the rollback")
        else:
            diffs += compare_sections(out.log.pre, log.post)
        after = (await self.gather([hp.host]))[hp.host]
        if after.hostname.known:
            report.digest_after = stable_digest(after)
            if report.digest_after != report.digest_before:
                diffs += facts_differences(out.pre_facts, after)
        else:
            diffs.append(f"facts after the rollback unreadable: {after.hostname.unknown_reason}")
        report.differences = diffs
        report.proven = not diffs
        self.add_rollback(report)

    def add_rollback(self, report: RollbackReport) -> None:
        if report.proven is False:
            logger.error(
                "ROLLBACK NOT PROVEN on %s (%s): %s",
                report.host,
                report.phase,
                "\n".join(report.differences),
            )
            self.result.errors.append(
                RunError(
                    kind="RollbackError",
                    host=report.host,
                    phase=report.phase,
                    message="the host does not equal its pre-apply facts: "
                    + "; ".join(d.splitlines()[0] for d in report.differences),
                )
            )
        self.result.rollbacks.append(report)
        self.emit(
            ApplyEvent(
                "rollback", report.phase, report.host, report.reason, report.proven, rollback=report
            )
        )

    async def settle_failed(self, out: _Outcome) -> None:
        """A failed host: prove its own rollback (by the phase, the timer or recover)."""
        if out.rollback is not None:  # pending: unreachable
            self.add_rollback(out.rollback)
            return
        log = out.log
        if log.missing or (not log.begun and not log.rollbacks):
            return  # the phase never started on the host: nothing to restore
        reason = out.error.message if out.error else "failed"
        by = log.rollback.by if log.rollback else (log.restore_by or "none")
        await self.prove(out, log, by, reason)

    # --- the whole plan ---

    async def run(self) -> RunResult:
        plan, result = self.plan, self.result
        self.emit(ApplyEvent("start", message=f"plan {plan.id}"))
        # Hosts the plan could not read, then every host with steps, read again now.
        unreachable = {
            h: hp.unknown_reason or "unreachable"
            for h, hp in plan.hosts.items()
            if not hp.reachable
        }
        with_steps = [h for h, hp in plan.hosts.items() if hp.steps and hp.reachable]
        # The caller's facts (those the plan was made from, on this transport) save every host
        # a second facts round trip; a host they lack is read now.
        given = self.given_facts or {}
        self.facts = {h: given[h] for h in with_steps if h in given}
        self.facts.update(await self.gather([h for h in with_steps if h not in given]))
        for h in with_steps:
            if not self.facts[h].hostname.known:
                unreachable[h] = self.facts[h].hostname.unknown_reason or "unreachable"
        if self.check_stale:
            changed = [
                h
                for h in with_steps
                if h not in unreachable and self.facts[h].digest() != plan.hosts[h].facts_digest
            ]
            if changed:
                raise StalePlan(plan.id, changed)
        if plan.refused:
            # A refused host breaks an LVS-DR safety rule; changing the others around it could
            # make it worse (directors sending to a real server whose own states were refused),
            # so whatever the unreachable-hosts policy, nothing runs anywhere.
            for h, rules in plan.refused.items():
                result.errors.append(
                    RunError(kind="SafetyRuleBroken", host=h, message="; ".join(rules))
                )
            result.ok = False
            result.comment = (
                f"refused: {', '.join(plan.refused)} break(s) an LVS-DR safety rule, so nothing "
                "ran; fix it by hand or set `adopt` for it"
            )
            self.not_run(set(plan.hosts), "not run: a host of the plan is refused")
            return self.done()
        for h, why in sorted(unreachable.items()):
            result.unreachable.append(h)
            result.errors.append(RunError(kind="HostUnreachable", host=h, message=why))
        # A blocked host has no steps; like an unreachable one it is a host the plan could not
        # bring to the desired state, so the same policy decides whether the others go on.
        blocked = {h: hp.blocked for h, hp in plan.hosts.items() if hp.blocked and hp.reachable}
        for h, why in sorted(blocked.items()):
            result.errors.append(RunError(kind="FactsUnknown", host=h, message=why))
        if (unreachable or blocked) and self.settings.unreachable_hosts == "stop":
            result.ok = False
            what = [f"unreachable: {', '.join(sorted(unreachable))}"] if unreachable else []
            what += [f"blocked: {why}" for _, why in sorted(blocked.items())]
            result.comment = (
                f"{'; '.join(what)}; settings.apply.unreachable_hosts = stop, so nothing ran"
            )
            self.not_run(set(plan.hosts), "not run: a host is unreachable or blocked and the "
                         "policy is stop")  # fmt: skip
            return self.done()
        skip = set(unreachable) | set(blocked)
        self.not_run(skip, "not run: host unreachable")
        phases = sorted({s.phase for hp in plan.hosts.values() for s in hp.steps})
        for n, phase in enumerate(phases):
            per_host = {h: st for h, st in plan.steps_in_phase(phase).items() if h not in skip}
            if not per_host:
                continue
            self.emit(ApplyEvent("phase", phase_name(phase), message=", ".join(per_host)))
            if not await self.run_phase(phase, per_host):
                result.ok = False
                for later in phases[n + 1 :]:
                    for h, st in plan.steps_in_phase(later).items():
                        if h not in skip:
                            self.add_not_run(h, later, st, "not run: the rollout stopped")
                break
        if skip:
            result.ok = False
        if result.ok and self.applied:
            await self.verify()
        return self.done()

    async def run_phase(self, phase: Phase, per_host: dict[str, tuple[Step, ...]]) -> bool:
        finished: list[list[_Outcome]] = []
        groups = batches(phase, sorted(per_host), self.settings.batch_size)
        for b, hosts in enumerate(groups):
            stale = [h for h in hosts if h in self.dirty]
            if stale:
                self.facts.update(await self.gather(stale))
            outs = [
                _Outcome(
                    hp=self.host_phase(h, phase, per_host[h]), batch=b, pre_facts=self.facts[h]
                )
                for h in hosts
            ]
            outs = list(await asyncio.gather(*(self.run_host(o) for o in outs)))
            failed = [o for o in outs if not o.ok]
            for o in outs:
                self.record(o)
            if not failed:
                for o in outs:
                    self.dirty.add(o.hp.host)
                    self.emit(ApplyEvent("host-done", phase_name(phase), o.hp.host, "ok", True))
                finished.append(outs)
                self.applied.append(outs)
                continue
            for o in failed:
                if o.error is not None:
                    self.result.errors.append(o.error)
                self.result.interrupted = self.result.interrupted or o.interrupted
                await self.settle_failed(o)
                self.emit(ApplyEvent("host-done", phase_name(phase), o.hp.host, "failed", False))
            reason = f"batch {b + 1} of {phase_name(phase)} failed on " + ", ".join(
                o.hp.host for o in failed
            )
            await asyncio.gather(*(self.rollback_finished(o, reason) for o in outs if o.ok))
            if phase in REAL_SERVER_PHASES and self.settings.finished_batches == "rollback":
                for done in reversed(finished):
                    await asyncio.gather(*(self.rollback_finished(o, reason) for o in done))
            else:
                for done in finished:
                    for o in done:
                        self.dirty.add(o.hp.host)
            for later in groups[b + 1 :]:
                for h in later:
                    self.add_not_run(h, phase, per_host[h], "not run: the rollout stopped")
            return False
        return True

    async def verify(self) -> None:
        """The verification phase; on failure, roll back every host phase that applied."""
        cfg = self.desired.settings.verify
        clusters = [c for c in self.plan.clusters if c in self.desired.clusters]
        if not cfg.enabled or not cfg.clients or not clusters:
            return
        self.emit(ApplyEvent("verify", message=f"verifying {', '.join(clusters)} from "
                             f"{', '.join(cfg.clients)}"))  # fmt: skip
        verification = await verify_desired(
            self.desired, self.transport, self.facts, clusters=clusters
        )
        self.result.verification = verification
        if verification.ok:
            self.emit(ApplyEvent("verify", message="verification passed", ok=True))
            return
        for failure in verification.failures:
            self.result.errors.append(
                RunError(
                    kind="VerificationError",
                    host=failure.host or "-",
                    phase="verify",
                    step_id=f"verify/{failure.check}",
                    message=f"{failure.check} check failed: {failure.message}",
                )
            )
        # A host answering ARP for a VIP explains misrouted traffic, not the other way round.
        first = min(verification.failures, key=lambda f: _CHECK_ORDER.index(f.check))
        why = f"verification failed ({first.check} check"
        why += f", host {first.host}): " if first.host else "): "
        why += "; ".join([first.message, *(f.message for f in verification.failures
                                           if f is not first)])  # fmt: skip
        self.emit(ApplyEvent("verify", host=first.host, message=why, ok=False))
        # Latest phase and batch first: the reverse of the order they were applied in.
        for outs in reversed(self.applied):
            await asyncio.gather(*(self.rollback_finished(o, why) for o in outs))
        self.result.ok = False
        rolled = ", ".join(f"{rb.host} ({rb.phase})" for rb in self.result.rollbacks)
        self.result.comment = why + (f"; rolled back: {rolled}" if rolled else "")

    def record(self, out: _Outcome) -> None:
        self.result.hosts.setdefault(out.hp.host, []).extend(out.results)
        if out.record is not None:
            self.result.phases.append(out.record)

    def add_not_run(self, host: str, phase: Phase, steps: Sequence[Step], why: str) -> None:
        self.result.hosts.setdefault(host, []).extend(
            StepResult(
                id=s.id,
                name=s.description or s.state_id,
                host=host,
                phase=phase_name(phase),
                function=s.function,
                result=None,
                comment=why,
            )
            for s in steps
        )

    def not_run(self, hosts: set[str], why: str) -> None:
        for h in sorted(hosts):
            hp = self.plan.hosts.get(h)
            if hp is None:
                continue
            for phase in sorted({s.phase for s in hp.steps}):
                self.add_not_run(h, phase, [s for s in hp.steps if s.phase == phase], why)

    def done(self) -> RunResult:
        r = self.result
        if r.errors:
            r.ok = False
        if not r.comment:
            if r.ok:
                r.comment = f"{sum(1 for s in r.steps() if s.result)} steps applied"
            else:
                rolled = ", ".join(f"{rb.host} ({rb.phase})" for rb in r.rollbacks)
                r.comment = "failed" + (f"; rolled back: {rolled}" if rolled else "")
        r.finished_at = datetime.now(UTC)
        self.emit(ApplyEvent("done", message=r.comment, ok=r.ok))
        return r


async def apply_plan(
    plan: Plan,
    desired: Desired,
    transport: Transport,
    *,
    on_event: EventHandler | None = None,
    check_stale: bool = False,
    facts: Mapping[str, HostFacts] | None = None,
) -> RunResult:
    """Apply `plan` host by host and phase by phase; never raises for a failed step.

    Inspect `RunResult.ok`, or call `RunResult.raise_for_errors()` for ApplyError /
    RollbackError. With `check_stale`, a host whose facts no longer have the plan's digest
    raises StalePlan before anything runs.

    `facts`: the hosts' facts as just gathered over `transport` (for `desired`'s managed
    paths), typically those the plan was made from. They are the pre-apply facts (and what
    `check_stale` compares), so the hosts are not read again before the first phase. Without
    them, every host with steps is read first.
    """
    return await _Run(plan, desired, transport, on_event, check_stale, facts).run()


__all__ = [
    "ApplyEvent",
    "EventHandler",
    "apply_plan",
    "batches",
    "facts_differences",
    "phase_name",
    "stable_digest",
]
