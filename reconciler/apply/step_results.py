"""Turning a phase log into results: each step's StepResult, a rollback's restored lines, and
one log continued by a later script about the same phase (pure).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reconciler.apply.events import phase_name
from reconciler.apply.host_phase import TIMEOUT_STATUSES, HostPhase
from reconciler.apply.phaselog import CommandRun, PhaseLog
from reconciler.apply.runresult import StepResult

_OUTPUT_LIMIT = 8000  # characters of one step's output kept in its result


def _argv_text(argv: Sequence[str]) -> str:
    return " ".join(argv)


def _command_argv(hp: HostPhase, run: CommandRun) -> str:
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


def step_results(hp: HostPhase, log: PhaseLog, why_not_run: str) -> list[StepResult]:
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
        if failed is not None and failed.rc in TIMEOUT_STATUSES:
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


def restored_lines(hp: HostPhase, log: PhaseLog) -> list[str]:
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


def merge_logs(base: PhaseLog, extra: PhaseLog) -> PhaseLog:
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
