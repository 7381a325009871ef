"""Turn an executor's RunResult into what the store keeps: step rows, backups, a summary.

Pure. The step rows are the ones GET /runs/{id} lists (applied steps, then each rollback with
what it restored and whether it was proven); the summary is the RunResult without the raw
snapshot contents (they stay on the host, under the backup directory the backups index names),
with the verification's traffic distribution spelled out (`vip:port/proto (client)` -> host -> n).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.apply.runresult import RunResult, StepResult
from reconciler.server.store.records import StepResultRecord


@dataclass(frozen=True, slots=True)
class BackupEntry:
    host: str
    location: str
    detail: dict[str, Any]


def _step_word(step: StepResult) -> str:
    if step.result is None:
        return "not_run"
    if step.result is False:
        return "failed"
    return "rolled_back" if step.rolled_back else "applied"


def step_row(seq: int, host: str, step: StepResult) -> StepResultRecord:
    """One step's row: at the end of the run, or live from the executor's step event."""
    return StepResultRecord(
        seq=seq,
        host=host,
        step_id=step.id,
        name=step.name,
        result=_step_word(step),
        comment=step.comment,
        changes={
            **step.changes,
            "phase": step.phase,
            "function": step.function,
            "exit_status": step.exit_status,
            "duration": step.duration,
        },
        output=step.output,
    )


def run_result_records(
    result: RunResult,
) -> tuple[list[StepResultRecord], list[BackupEntry], dict[str, Any]]:
    rows: list[StepResultRecord] = []
    for host, steps in result.hosts.items():
        for step in steps:
            rows.append(step_row(len(rows), host, step))
    for rb in result.rollbacks:
        proof = {True: "proven", False: "unproven", None: "unchecked"}[rb.proven]
        rows.append(
            StepResultRecord(
                seq=len(rows),
                host=rb.host,
                step_id=f"{rb.host}/rollback/{rb.phase}",
                name=f"restore {rb.phase} (by {rb.by})",
                result=proof,
                comment=rb.reason,
                changes={
                    "restored": rb.restored,
                    "differences": rb.differences,
                    "digest_before": rb.digest_before,
                    "digest_after": rb.digest_after,
                },
                rollback=True,
            )
        )
    backups = [
        BackupEntry(
            host=phase.host,
            location=phase.backup_dir,
            detail={
                "phase": phase.phase,
                "batch": phase.batch,
                "ok": phase.ok,
                "lockout": phase.lockout,
                "sections": sorted(phase.snapshot),
                "files": phase.snapshot_files,
                "comment": phase.comment,
            },
        )
        for phase in result.phases
        if phase.backup_dir
    ]
    summary = result.model_dump(mode="json", exclude={"hosts": True})
    for phase in summary.get("phases", []):
        phase["snapshot"] = sorted(phase.get("snapshot", {}))
    if result.verification is not None:
        summary["verification"]["distribution"] = result.verification.distribution()
    if result.errors:
        summary["error"] = "; ".join(f"{e.host}: {e.message}" for e in result.errors)
    elif not result.ok:
        summary["error"] = result.comment or "apply failed"
    return rows, backups, summary
