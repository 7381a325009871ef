"""Rolling back the hosts of a run that a crash left `applying`, and saying what is true after.

Policy (DESIGN: "an interrupted run is found and rolled back"): a run interrupted anywhere, in
the middle of a phase or between two phases, is rolled back on EVERY host it touched, confirmed
phases included. Finishing the plan instead would mean trusting a plan approved against facts
that are now older than the crash, and keeping only the confirmed phases would leave the cluster
at a mix that no plan describes (a real server prepared for a VIP that one director serves and
the other does not). After a recovery the cluster is therefore either at its pre-run state,
which `shoal plan` then proposes to change again exactly as the interrupted plan did, or a host
is recorded `unknown` and the operator is told which and why.

How: per phase, latest first across all hosts (the directors stop sending to a real server
before the real server is undone), every host's backup directory of the plan is asked to
recover
(`reconciler.apply.followup_scripts.build_recover_script`): a phase that never started there has no
directory; one still running is stopped and restored; a finished or confirmed one is restored;
one that the phase itself or its lock-out timer already restored is waited for.

What the record says per host is decided by facts only, never by an exit status: the facts are
gathered again after every restore and compared with the digest the plan was made from.
`restored` (some phase was undone and the facts equal the pre-apply facts), `untouched` (no
phase had started there and the facts equal them), or `unknown` (the host could not be reached,
its facts could not be read, or they differ: the differences are listed, from the raw snapshots
and from the plan's own steps).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from reconciler.apply.followup_scripts import build_recover_script
from reconciler.apply.host_phase import phase_dir, phase_key
from reconciler.apply.phaselog import PhaseLog, compare_sections, parse_log
from reconciler.errors import ShoalError
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.steps import HostPlan, Phase, Plan, Step
from reconciler.transport.protocol import Transport

log = logging.getLogger("shoal.recovery")

RECOVER_TIMEOUT = 900.0  # the script may wait for a lock-out timer's own restore (<= 600 s)

HostState = Literal["restored", "untouched", "unknown"]


@dataclass
class PhaseRecovery:
    """What the recover script found and did for one phase on one host."""

    host: str
    phase: Phase
    backup: str
    found: str = "not_started"  # not_started, running, finished, failed, confirmed, restored
    restored_by: str | None = None  # recover, timer, phase, controller
    error: str | None = None
    log: PhaseLog = field(default_factory=PhaseLog)

    @property
    def started(self) -> bool:
        return self.found != "not_started"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "phase": phase_key(self.phase),
            "backup": self.backup,
            "found": self.found,
        }
        if self.restored_by is not None:
            out["restored_by"] = self.restored_by
        if self.error is not None:
            out["error"] = self.error
        return out


def _found(log: PhaseLog) -> tuple[str, str | None]:
    """How the phase was when the recover script came, and who restored it."""
    by = log.rollback.by if log.rollback is not None else log.restore_by
    if log.found_confirmed:
        return "confirmed", by
    if log.restore_by is not None and log.restore_done:
        # The phase itself or its timer before the crash, or a recovery that a second crash
        # cut off (its own log went to the dead controller; the host finished it).
        return "restored", by
    if log.restore_by not in (None, "recover"):
        return "restored", by
    if log.rollback is not None and log.rollback.by not in ("recover", "unknown"):
        return "restored", by
    if log.aborted:
        return "running", by
    if log.end == "failed":
        return "failed", by
    if log.end == "ok":
        return "finished", by
    return "running", by


async def _recover_phase(
    transport: Transport, plan_id: str, host: str, phase: Phase
) -> PhaseRecovery:
    out = PhaseRecovery(host=host, phase=phase, backup=phase_dir(plan_id, phase))
    script = build_recover_script(plan_id, phase)
    try:
        result = await transport.run_script_fresh(host, script, timeout=RECOVER_TIMEOUT)
    except ShoalError as exc:
        out.found, out.error = "unknown", f"the recover script could not run: {exc}"
        log.error("recover failed", extra={"host": host, "phase": phase.name, "error": str(exc)})
        return out
    out.log = parse_log(str(result.stdout))
    if out.log.missing:
        return out
    out.found, out.restored_by = _found(out.log)
    if int(result.exit_status) != 0:
        out.error = f"the recover script exited {result.exit_status}"
    elif not out.log.rolled_back and not out.log.restore_done:
        out.error = "the restore did not report its end"
    return out


async def restore_snapshots(plan: Plan, transport: Transport) -> list[PhaseRecovery]:
    """Recover every (host, phase) of `plan`: phases latest first, the hosts of one together."""
    phases = sorted({s.phase for hp in plan.hosts.values() for s in hp.steps}, reverse=True)
    done: list[PhaseRecovery] = []
    for phase in phases:
        hosts = sorted(h for h, hp in plan.hosts.items() if any(s.phase == phase for s in hp.steps))
        done += await asyncio.gather(
            *(_recover_phase(transport, plan.id, h, Phase(phase)) for h in hosts)
        )
    return done


def _step_key(step: Step) -> tuple[str, str | None, str | None]:
    return step.id, step.change.before, step.change.after


def plan_differences(original: HostPlan, fresh: HostPlan | None) -> list[str]:
    """How a host's plan from its facts now differs from the plan made before the run.

    At the pre-apply state the two are the same; a step that is gone is in effect on the host
    (the run's change survived), a new or changed one is a change nobody planned.
    """
    now = {_step_key(s) for s in fresh.steps} if fresh is not None else set()
    before = {_step_key(s) for s in original.steps}
    out = [f"still in effect: {k[0]} ({k[2]})" for k in sorted(before - now, key=str)]
    out += [
        f"planned now but not before: {k[0]} ({k[1]} -> {k[2]})"
        for k in sorted(now - before, key=str)
    ]
    return out


def host_verdicts(
    plan: Plan,
    phases: list[PhaseRecovery],
    facts: Mapping[str, HostFacts],
    fresh: Plan | None,
) -> dict[str, dict[str, Any]]:
    """Per host of `plan`: its state after the recovery, proven by `facts` (gathered after)."""
    out: dict[str, dict[str, Any]] = {}
    for host, original in sorted(plan.hosts.items()):
        mine = [p for p in phases if p.host == host]
        entry: dict[str, Any] = {"phases": [p.as_dict() for p in mine]}
        errors = [f"{phase_key(p.phase)}: {p.error}" for p in mine if p.error]
        differences: list[str] = []
        for p in mine:
            if p.started and p.log.pre and p.log.post:
                differences += [
                    f"{phase_key(p.phase)} snapshot: {d}"
                    for d in compare_sections(p.log.pre, p.log.post)
                ]
        got = facts.get(host)
        state: HostState
        if any(p.found == "unknown" for p in mine):
            state, reason = "unknown", "unreachable: " + "; ".join(errors)
        elif got is None or not got.hostname.known:
            why = got.hostname.unknown_reason if got is not None else "not gathered"
            state, reason = "unknown", f"facts after the restore could not be read: {why}"
        elif got.digest() != original.facts_digest:
            # Facts unreadable before the run too (a lab host without systemd) count in the
            # digest both times; only a difference is a doubt, and unread facts may explain it.
            state, reason = "unknown", "its facts differ from the pre-apply facts"
            if got.unknown_facts:
                unread = ", ".join(f"{k} ({v})" for k, v in sorted(got.unknown_facts.items()))
                reason += f"; unreadable now: {unread}"
            now = fresh.hosts.get(host) if fresh is not None else None
            differences += plan_differences(original, now)
        elif any(p.started for p in mine):
            state, reason = "restored", "facts equal the pre-apply facts"
        else:
            state, reason = "untouched", "no phase had started; facts equal the pre-apply facts"
        entry.update(state=state, reason=reason, errors=errors, differences=differences)
        out[host] = entry
    return out


def backups(phases: list[PhaseRecovery]) -> list[PhaseRecovery]:
    """The phases that left a backup directory on their host (what GET /runs/{id} lists)."""
    return [p for p in phases if p.started and p.found != "unknown"]
