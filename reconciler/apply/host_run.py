"""Running one phase on one host: its script over one channel, and what its log says.

The phase script (`reconciler.apply.phase_script`) runs the steps and restores the host itself
when one fails. How it ended decides what follows: a clean end of a phase that armed the
lock-out timer is confirmed over a new connection, a lost channel or an end never reported is
recovered (`reconciler.apply.confirmation`); a host still busy with an earlier attempt of the
same plan is left alone. `finish_host` turns the log into step results and the phase's record.
"""

from __future__ import annotations

import secrets
from typing import Literal

from reconciler.apply.confirmation import confirm, recover
from reconciler.apply.events import ApplyEvent, phase_name
from reconciler.apply.host_phase import HostPhase
from reconciler.apply.phase_script import build_phase_script
from reconciler.apply.phaselog import parse_log
from reconciler.apply.run_state import HostOutcome, RunState
from reconciler.apply.runresult import HostPhaseRun, RunError, SnapshotSection
from reconciler.apply.snapshot_targets import needs_lockout
from reconciler.apply.step_results import step_results
from reconciler.errors import ShoalError
from reconciler.plan.steps import Phase, Step


def host_phase(run: RunState, host: str, phase: Phase, steps: tuple[Step, ...]) -> HostPhase:
    lockout = run.settings.lockout_timeout if needs_lockout(steps) else None
    return HostPhase(
        plan_id=run.plan.id,
        phase=phase,
        host=host,
        steps=steps,
        nonce=secrets.token_hex(8),
        command_timeout=run.settings.command_timeout,
        lockout_timeout=lockout,
    )


async def run_host(run: RunState, out: HostOutcome) -> HostOutcome:
    hp = out.hp
    phase = phase_name(hp.phase)
    run.emit(ApplyEvent("host-start", phase, hp.host, f"{len(hp.steps)} steps"))
    try:
        res = await run.transport.run_script(
            hp.host, build_phase_script(hp), timeout=hp.budget()
        )
        out.log = parse_log(str(res.stdout) + str(res.stderr))
    except ShoalError as exc:
        # The channel is gone; the host goes on alone (and restores itself on failure).
        out.interrupted = True
        out.error = RunError(
            kind="Interrupted", host=hp.host, phase=phase, message=f"lost the phase: {exc}"
        )
        await recover(run, out, str(exc))
        return finish_host(run, out)
    if out.log.busy:
        out.error = RunError(
            kind="Busy",
            host=hp.host,
            phase=phase,
            message="an earlier attempt of this plan is still running or armed on the host",
        )
        return finish_host(run, out)
    if out.log.end == "ok" and hp.lockout_timeout:
        await confirm(run, out)
    elif out.log.end == "ok":
        out.ok = True
    elif out.log.end == "failed":
        out.error = step_error(out)
    else:
        out.interrupted = True
        out.error = RunError(
            kind="Interrupted",
            host=hp.host,
            phase=phase,
            message="the phase stopped without reporting its end"
            + (f": {out.log.stray.strip()[-300:]}" if out.log.stray.strip() else ""),
        )
        await recover(run, out, "the phase stopped without reporting its end")
    return finish_host(run, out)


def step_error(out: HostOutcome) -> RunError:
    hp, log = out.hp, out.log
    i = log.failed_step
    if i is None or i < 0 or i >= len(hp.steps):
        msg = "the lock-out timer could not be armed; no step ran" if i == -1 else "failed"
        return RunError(
            kind="ApplyError", host=hp.host, phase=phase_name(hp.phase), message=msg
        )
    results = step_results(hp, log, "")
    return RunError(
        kind="ApplyError",
        host=hp.host,
        phase=phase_name(hp.phase),
        step_id=hp.steps[i].id,
        message=results[i].comment,
    )


def finish_host(run: RunState, out: HostOutcome) -> HostOutcome:
    hp, log = out.hp, out.log
    phase = phase_name(hp.phase)
    why = "not run: an earlier step failed" if log.begun else "not run"
    if out.error is not None and out.error.kind == "Busy":
        why = "not run: " + out.error.message
    out.results = step_results(hp, log, why)
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
        run.emit(ApplyEvent("step", phase, hp.host, r.comment, r.result, step=r))
    return out
