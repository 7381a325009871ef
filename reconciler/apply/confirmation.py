"""After a phase script: confirm the phase over a new connection, or recover a phase it lost.

A phase that armed the lock-out timer is confirmed over a NEW connection: if none gets through,
the change cut the controller off, and the host restores itself when its timer fires. A phase
whose channel was lost, or that stopped without reporting its end, is recovered: the host is
reached again, the phase stopped if it still runs, and restored; an unreachable host leaves its
rollback pending (the timer, if armed, restores it).
"""

from __future__ import annotations

import asyncio

from reconciler.apply.events import ApplyEvent, phase_name
from reconciler.apply.followup_scripts import build_confirm_script, build_recover_script
from reconciler.apply.phaselog import parse_log
from reconciler.apply.run_state import HostOutcome, RunState
from reconciler.apply.runresult import RollbackReport, RunError
from reconciler.apply.step_results import merge_logs
from reconciler.errors import ShoalError

CONFIRM_TIMEOUT = 30.0


async def confirm(run: RunState, out: HostOutcome) -> None:
    """Confirm over a NEW connection; if that fails, the host is locked out and heals."""
    hp = out.hp
    script = build_confirm_script(hp.plan_id, hp.phase)
    try:
        res = await run.transport.run_script_fresh(hp.host, script, timeout=CONFIRM_TIMEOUT)
    except ShoalError as exc:
        out.error = RunError(
            kind="ApplyError",
            host=hp.host,
            phase=phase_name(hp.phase),
            message=f"no new SSH connection after the phase (lock-out?): {exc}",
        )
        await recover(run, out, f"confirmation over a new connection failed: {exc}")
        return
    clog = parse_log(str(res.stdout))
    merge_logs(out.log, clog)
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


async def recover(run: RunState, out: HostOutcome, why: str) -> None:
    """Reach the host again, stop the phase if it still runs, and restore it.

    When the host cannot be reached and the phase armed the lock-out timer, wait for the
    timer's deadline once, then try again.
    """
    hp = out.hp
    script = build_recover_script(hp.plan_id, hp.phase)
    attempts = 2 if hp.lockout_timeout else 1
    for attempt in range(attempts):
        try:
            res = await run.transport.run_script_fresh(hp.host, script, timeout=hp.budget())
        except ShoalError as exc:
            if attempt + 1 < attempts:
                wait = float((hp.lockout_timeout or 0) + 3)
                run.emit(
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
        merge_logs(out.log, parse_log(str(res.stdout)))
        if out.log.missing:
            # The phase never started there: nothing to restore.
            out.rollback = None
        return
