"""What one apply did: per-host per-step results (Salt-style), snapshots, rollbacks, errors,
and the verification that followed (the traffic distribution per real server).

Plain pydantic values, JSON-serialisable: the server stores a RunResult and serves it at
GET /runs/{id}; `shoal apply --json` prints it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from reconciler.errors import ApplyError, RollbackError
from reconciler.verify.result import VerificationResult


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepResult(_Value):
    """One step, Salt-style: result True (applied), False (failed), None (not run)."""

    id: str
    name: str
    host: str
    phase: str
    function: str
    result: bool | None
    changes: dict[str, str | None] = Field(default_factory=dict)  # {"before": .., "after": ..}
    comment: str = ""
    output: str = ""
    duration: float | None = None  # seconds
    exit_status: int | None = None
    rolled_back: bool = False


class SnapshotSection(_Value):
    """One raw output of a snapshot (e.g. arptables-save), as the host printed it."""

    exit_status: int
    content: str


class HostPhaseRun(_Value):
    """One phase on one host: where its backup lives, what the snapshot held, how it ended."""

    host: str
    phase: str
    batch: int
    ok: bool
    backup_dir: str
    # by section: arptables, iptables_nat, nft, ipvs, addr[.N], sysctl, file.N
    snapshot: dict[str, SnapshotSection] = Field(default_factory=dict)
    snapshot_files: list[str] = Field(default_factory=list)  # file.N -> path
    snapshot_interfaces: list[str] = Field(default_factory=list)  # addr.N -> interface
    lockout: Literal["none", "confirmed", "fired", "unconfirmed", "failed"] = "none"
    comment: str = ""


class RollbackReport(_Value):
    """What a rollback restored, and whether the host provably equals its pre-apply facts."""

    host: str
    phase: str
    by: str  # phase (the script itself), timer, controller, recover, pending
    reason: str
    restored: list[str] = Field(default_factory=list)
    proven: bool | None = None  # None: could not check (host unreachable)
    differences: list[str] = Field(default_factory=list)
    digest_before: str | None = None
    digest_after: str | None = None


class RunError(_Value):
    kind: Literal[
        "ApplyError",
        "RollbackError",
        "HostUnreachable",
        "FactsUnknown",
        "SafetyRuleBroken",
        "Interrupted",
        "Busy",
        "VerificationError",
    ]
    host: str
    phase: str | None = None
    step_id: str | None = None
    message: str


class RunResult(_Value):
    plan_id: str
    revision: str
    ok: bool
    interrupted: bool = False
    started_at: datetime
    finished_at: datetime | None = None
    hosts: dict[str, list[StepResult]] = Field(default_factory=dict)
    phases: list[HostPhaseRun] = Field(default_factory=list)
    rollbacks: list[RollbackReport] = Field(default_factory=list)
    unreachable: list[str] = Field(default_factory=list)
    errors: list[RunError] = Field(default_factory=list)
    # The verification phase after every phase applied (None: not run, e.g. no verify.clients);
    # a failure there fails the run and rolls back every host that changed.
    verification: VerificationResult | None = None
    comment: str = ""

    def steps(self) -> list[StepResult]:
        return [s for results in self.hosts.values() for s in results]

    def raise_for_errors(self) -> None:
        """RollbackError if a rollback could not be proven, else ApplyError if anything failed."""
        for rb in self.rollbacks:
            if rb.proven is False:
                raise RollbackError(rb.host, rb.phase, "; ".join(rb.differences) or rb.reason)
        if not self.ok:
            first = self.errors[0] if self.errors else None
            raise ApplyError(
                first.host if first else "-",
                (first.step_id or first.phase or "-") if first else "-",
                first.message if first else self.comment or "apply failed",
            )
