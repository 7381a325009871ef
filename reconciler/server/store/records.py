"""What the store hands out: the row types (plain frozen values, never live rows), the state
names they carry, and the timestamp format of every row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from reconciler.plan.steps import Plan

PlanState = Literal[
    "pending",
    "approved",
    "applying",
    "applied",
    "failed",
    "rejected",
    "superseded",
    "stale",
    "interrupted",
]
PLAN_STATES: tuple[PlanState, ...] = get_args(PlanState)
# A plan in one of these states still matters to the controller; the rest are history.
OPEN_PLAN_STATES: tuple[PlanState, ...] = ("pending", "approved", "applying")

PlanKind = Literal["change", "drift", "heal"]
RunState = Literal["applying", "applied", "failed", "interrupted"]
Role = Literal["viewer", "approver", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
ROLE_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    name: str
    head_revision: str | None
    planned_revision: str | None
    applied_revision: str | None
    last_plan_id: str | None
    in_sync: bool | None
    errors: list[dict[str, Any]]
    errors_revision: str | None
    drift: dict[str, Any] | None
    last_error: str | None
    checked_at: str | None
    updated_at: str


@dataclass(frozen=True, slots=True)
class RevisionRecord:
    sha: str
    seen_at: str
    valid: bool
    errors: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class PlanRecord:
    id: str
    base_id: str
    cluster: str
    revision: str
    kind: PlanKind
    state: PlanState
    empty: bool
    plan: Plan
    reason: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    plan_id: str
    decision: Literal["approve", "reject"]
    actor: str
    comment: str
    at: str


@dataclass(frozen=True, slots=True)
class StepResultRecord:
    seq: int
    host: str
    step_id: str
    name: str
    result: str  # "ok" | "changed" | "failed" | "skipped" | "rolled_back" ...
    comment: str = ""
    changes: dict[str, Any] | None = None
    output: str = ""
    rollback: bool = False
    at: str = ""


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    plan_id: str
    cluster: str
    state: RunState
    actor: str
    started_at: str
    finished_at: str | None
    ok: bool | None
    error: str | None
    result: dict[str, Any] | None
    recovery: dict[str, Any] | None
    # The owner epoch of each of its clusters the run was started (or taken over) under, on a
    # store several servers share; None on a server that owns every cluster alone (SQLite).
    fence: dict[str, int] | None = None


@dataclass(frozen=True, slots=True)
class BackupRecord:
    run_id: str
    plan_id: str
    host: str
    location: str
    detail: dict[str, Any]
    at: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: str
    actor: str
    action: str
    cluster: str | None
    plan_id: str | None
    run_id: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    name: str
    role: Role
    created_at: str
    revoked_at: str | None

    @property
    def actor(self) -> str:
        return f"token:{self.name}"


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A web sign-in session; `id` is the sha256 of the secret its cookie holds."""

    id: str
    token_id: str
    csrf: str
    created_at: str
    expires_at: str


@dataclass(frozen=True, slots=True)
class HostFactsRecord:
    host: str
    digest: str
    facts: dict[str, Any]
    gathered_at: str


class FencedOut(Exception):
    """A write of a run under an owner epoch that is no longer current: another server owns
    the cluster now (it took the lock over); nothing was written."""

    def __init__(self, run_id: str | None, cluster: str, epoch: int | None, current: int | None):
        self.run_id, self.cluster, self.epoch, self.current = run_id, cluster, epoch, current
        super().__init__(
            f"run {run_id or '(new)'}: cluster {cluster} is owned under epoch {current}, "
            f"this write is of epoch {epoch}: refused"
        )


class PlanExists(Exception):
    """A plan with this id is already stored."""
