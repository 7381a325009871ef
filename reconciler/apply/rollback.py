"""Rolling back a host phase, and the proof that follows every rollback, wherever it ran.

The proof: the snapshot is taken again and must equal the one from before (raw outputs,
`reconciler.apply.phaselog.compare_sections`), and the facts gathered again must have the
digest they had before the phase (`reconciler.apply.stable_facts`). A rollback without that
proof is reported loudly: RollbackReport.proven False, logged at ERROR, and a RollbackError in
the run's errors.
"""

from __future__ import annotations

import logging

from reconciler.apply.events import ApplyEvent, phase_name
from reconciler.apply.followup_scripts import build_rollback_script
from reconciler.apply.phaselog import PhaseLog, compare_sections, parse_log
from reconciler.apply.run_state import HostOutcome, RunState
from reconciler.apply.runresult import RollbackReport, RunError
from reconciler.apply.stable_facts import facts_differences, stable_digest
from reconciler.apply.step_results import restored_lines
from reconciler.errors import ShoalError

# The name the executor logged under before it was split: log filters keep working.
logger = logging.getLogger("reconciler.apply.executor")


async def rollback_finished(run: RunState, out: HostOutcome, reason: str) -> None:
    """Undo a phase that succeeded (its batch, or a finished batch, failed later)."""
    hp = out.hp
    try:
        res = await run.transport.run_script(
            hp.host, build_rollback_script(hp.plan_id, hp.phase), timeout=hp.budget()
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
        add_rollback(run, report)
        return
    rlog = parse_log(str(res.stdout))
    out.log.rollbacks.extend(rlog.rollbacks)
    out.log.post = rlog.post
    for r in out.results:
        if r.result:
            r.rolled_back = True
            r.comment += "; rolled back"
    await prove(run, out, rlog, "controller", reason)


async def prove(run: RunState, out: HostOutcome, log: PhaseLog, by: str, reason: str) -> None:
    hp = out.hp
    report = RollbackReport(
        host=hp.host,
        phase=phase_name(hp.phase),
        by=by,
        reason=reason,
        restored=restored_lines(hp, log),
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
    after = (await run.gather([hp.host]))[hp.host]
    if after.hostname.known:
        report.digest_after = stable_digest(after)
        if report.digest_after != report.digest_before:
            diffs += facts_differences(out.pre_facts, after)
    else:
        diffs.append(f"facts after the rollback unreadable: {after.hostname.unknown_reason}")
    report.differences = diffs
    report.proven = not diffs
    add_rollback(run, report)


def add_rollback(run: RunState, report: RollbackReport) -> None:
    if report.proven is False:
        logger.error(
            "ROLLBACK NOT PROVEN on %s (%s): %s",
            report.host,
            report.phase,
            "\n".join(report.differences),
        )
        run.result.errors.append(
            RunError(
                kind="RollbackError",
                host=report.host,
                phase=report.phase,
                message="the host does not equal its pre-apply facts: "
                + "; ".join(d.splitlines()[0] for d in report.differences),
            )
        )
    run.result.rollbacks.append(report)
    run.emit(
        ApplyEvent(
            "rollback", report.phase, report.host, report.reason, report.proven, rollback=report
        )
    )


async def settle_failed(run: RunState, out: HostOutcome) -> None:
    """A failed host: prove its own rollback (by the phase, the timer or recover)."""
    if out.rollback is not None:  # pending: unreachable
        add_rollback(run, out.rollback)
        return
    log = out.log
    if log.missing or (not log.begun and not log.rollbacks):
        return  # the phase never started on the host: nothing to restore
    reason = out.error.message if out.error else "failed"
    by = log.rollback.by if log.rollback else (log.restore_by or "none")
    await prove(run, out, log, by, reason)
