"""Response and request bodies of the HTTP API.

Separate from the domain models on purpose: the API promises these shapes to its clients, and
the engine's models may change without breaking them. Conversion from store records and domain
values lives here too (`*_out` functions), so routes stay a few lines each.
"""

from __future__ import annotations

import difflib
import hashlib
import shlex
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from reconciler.plan.stepdiff import file_diff
from reconciler.plan.steps import HostPlan, Step
from reconciler.server.clock import stamp
from reconciler.server.gate import Hold
from reconciler.server.store.freeze_overrides import FreezeOverride
from reconciler.server.store.records import (
    ApprovalRecord,
    AuditRecord,
    BackupRecord,
    ClusterRecord,
    HostFactsRecord,
    PlanRecord,
    RunRecord,
    StepResultRecord,
)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class Problem(_Out):
    detail: str


class Conflict(_Out):
    """409: the plan cannot be approved or rejected as asked."""

    detail: str
    plan_id: str
    state: str
    reason: str = ""
    hosts: list[str] = []
    new_plan_id: str | None = None


class Health(_Out):
    status: Literal["ok"] = "ok"


class Ready(_Out):
    ready: bool
    checks: dict[str, bool]


# --- clusters -------------------------------------------------------------------------------------


class ConfigIssueOut(_Out):
    file: str
    line: int | None = None
    column: int | None = None
    key_path: str = ""
    message: str
    text: str


class DriftOut(_Out):
    hosts: list[str]
    plan_id: str | None = None
    revision: str | None = None
    detected_at: str | None = None
    # Host -> the LVS-DR safety rules it breaks (reconciler.plan.invariants): refused, not healed.
    violations: dict[str, list[str]] = {}


class PlanSummary(_Out):
    id: str
    clusters: list[str]
    revision: str
    kind: str
    state: str
    reason: str | None = None
    created_at: str
    updated_at: str
    changed_hosts: list[str]
    step_count: int


class ClusterOut(_Out):
    name: str
    head_revision: str | None
    planned_revision: str | None
    applied_revision: str | None
    in_sync: bool | None
    last_plan: PlanSummary | None
    drift: DriftOut | None
    errors: list[ConfigIssueOut]
    errors_revision: str | None
    last_error: str | None
    checked_at: str | None


class RepositoryOut(_Out):
    url: str
    branch: str
    head: str | None
    head_valid: bool | None
    head_errors: list[ConfigIssueOut]
    last_source_error: str | None
    last_pass_at: str | None


class LoopOut(_Out):
    """The watch loop's counters since the process started: a wake that was refused or
    deduplicated (a replayed webhook) leaves `wakes` as it was."""

    wakes: int
    passes_started: int
    passes_completed: int


class ClustersResponse(_Out):
    repository: RepositoryOut
    loop: LoopOut
    clusters: list[ClusterOut]


# --- plans ----------------------------------------------------------------------------------------


class FileWriteOut(_Out):
    path: str
    mode: str
    sha256: str
    size: int


class StepOut(_Out):
    id: str
    host: str
    state_id: str
    function: str
    subsystem: str
    phase: str
    description: str
    before: str | None
    after: str | None
    commands: list[str]
    writes: list[FileWriteOut]
    undo: list[str]
    require: list[str]
    # For a step that writes a whole file: the unified diff of the file as it is against the
    # file as planned (`--- PATH (on HOST)`, `+++ PATH (planned)`); None for other steps.
    diff: str | None = None


class SkippedOut(_Out):
    state_id: str
    reason: str


class HostPlanOut(_Out):
    host: str
    facts_digest: str
    reachable: bool
    unknown_reason: str | None
    # Why nothing may change on this reachable host (a fact its plan needs could not be read).
    blocked: str | None = None
    diff: str
    steps: list[StepOut]
    skipped: list[SkippedOut]


class ApprovalOut(_Out):
    decision: str
    actor: str
    comment: str
    at: str


class PlanDetail(PlanSummary):
    fact_digests: dict[str, str]
    hosts: dict[str, HostPlanOut]
    approvals: list[ApprovalOut]
    runs: list[str]
    # What keeps this open plan from starting now (a lock, a freeze window), and until when.
    waiting: str | None = None
    waiting_until: str | None = None
    freeze_override: FreezeOverrideOut | None = None


class Decision(BaseModel):
    """Body of approve/reject."""

    model_config = ConfigDict(extra="forbid")

    comment: str = Field(default="", max_length=4000)


class LockRequest(_Out):
    reason: str = Field(min_length=1, max_length=2000, description="why nothing may apply")


class LockOut(_Out):
    cluster: str
    reason: str
    actor: str
    locked_at: str


class ApproveResponse(_Out):
    """202: the run started (`applying`, `run_id`), or the approval was recorded and the plan
    waits for approvals by other tokens (`pending`, no run yet)."""

    plan_id: str
    state: str
    run_id: str | None = None
    approvals: int = 1
    approvals_required: int = 1
    waiting: str | None = Field(default=None, description="what an approved plan waits for")
    waiting_until: str | None = Field(
        default=None, description="when the freeze window it waits for ends (UTC)")


class FreezeOverrideRequest(_Out):
    reason: str = Field(min_length=1, max_length=2000,
                        description="why this plan may start during a freeze")  # fmt: skip


class FreezeOverrideOut(_Out):
    plan_id: str
    reason: str
    actor: str
    at: str


class RejectResponse(_Out):
    plan_id: str
    state: str


# --- runs, hosts, audit, webhooks ---------------------------------------------------------------


class StepResultOut(_Out):
    seq: int
    host: str
    step_id: str
    name: str
    result: str
    comment: str
    changes: dict[str, Any] | None
    output: str
    rollback: bool
    at: str


class BackupOut(_Out):
    host: str
    location: str
    detail: dict[str, Any]
    at: str


class VerificationFailureOut(_Out):
    check: str
    host: str | None
    message: str


class RealServerTrafficOut(_Out):
    host: str
    weight: int
    # Requests counted on the host (None: the counter could not be read), and replies whose
    # body named it.
    received: int | None
    answered: int


class ServiceTrafficOut(_Out):
    """Traffic from one client through one VIP, per real server, against the weights."""

    cluster: str
    service: str
    vip: str
    port: int
    protocol: str
    client: str
    director: str | None
    requests: int
    ok: int
    failed: int
    real_servers: list[RealServerTrafficOut]


class ArpCheckOut(_Out):
    """Who answered ARP for a VIP on a client's segment (only the active director may)."""

    client: str
    vip: str
    director: str | None
    expected_mac: str | None
    # MAC -> the inventory host it belongs to (None: not one of ours)
    responders: dict[str, str | None]
    neighbour_mac: str | None
    neighbour_host: str | None


class VerificationOut(_Out):
    """The verification phase that ended the run (real traffic through each VIP, ARP)."""

    ok: bool
    clients: list[str] = []
    # `vip:port/proto (client)` -> real server -> requests it received
    distribution: dict[str, dict[str, int]] = {}
    services: list[ServiceTrafficOut] = []
    arp: list[ArpCheckOut] = []
    failures: list[VerificationFailureOut] = []
    notes: list[str] = []
    elapsed: float = 0.0


class RunOut(_Out):
    id: str
    plan_id: str
    clusters: list[str]
    state: str
    actor: str
    started_at: str
    finished_at: str | None
    ok: bool | None
    error: str | None
    steps: list[StepResultOut]
    rollbacks: list[StepResultOut]
    result: dict[str, Any] | None
    recovery: dict[str, Any] | None
    backups: list[BackupOut]
    verification: VerificationOut | None = None


class HostFactsOut(_Out):
    host: str
    digest: str
    gathered_at: str
    facts: dict[str, Any]


class AuditOut(_Out):
    id: int
    at: str
    actor: str
    action: str
    cluster: str | None
    plan_id: str | None
    run_id: str | None
    detail: dict[str, Any]


class WebhookAccepted(_Out):
    """202: the delivery was taken; only `queued` woke the loop."""

    queued: bool
    scheme: Literal["github", "gitlab", "shoal"]
    outcome: Literal["queued", "duplicate", "ignored"]
    delivery: str | None = None
    reason: str = ""


class ReconcileAccepted(_Out):
    queued: bool


# --- conversions ----------------------------------------------------------------------------------


def plan_summary(record: PlanRecord) -> PlanSummary:
    hosts = record.plan.hosts
    return PlanSummary(
        id=record.id,
        clusters=record.cluster.split(","),
        revision=record.revision,
        kind=record.kind,
        state=record.state,
        reason=record.reason,
        created_at=record.created_at,
        updated_at=record.updated_at,
        changed_hosts=sorted(h for h, hp in hosts.items() if hp.steps),
        step_count=sum(len(hp.steps) for hp in hosts.values()),
    )


def _step_out(step: Step) -> StepOut:
    return StepOut(
        id=step.id,
        host=step.host,
        state_id=step.state_id,
        function=step.function,
        subsystem=step.subsystem,
        phase=step.phase.name,
        description=step.description,
        before=step.change.before,
        after=step.change.after,
        commands=[shlex.join(argv) for argv in step.commands],
        writes=[
            FileWriteOut(
                path=w.path,
                mode=w.mode,
                sha256=hashlib.sha256(w.content.encode()).hexdigest(),
                size=len(w.content.encode()),
            )
            for w in step.writes
        ],
        undo=[shlex.join(argv) for argv in step.undo],
        require=list(step.require),
        diff=_joined(file_diff(step)),
    )


def _joined(lines: list[str] | None) -> str | None:
    return None if lines is None else "\n".join(lines)


def step_diff(step: Step) -> list[str]:
    """One step's unified diff: a file it writes as `--- PATH (on HOST)` against
    `+++ PATH (planned)`, any other change as the host's state now against the desired one."""
    diff = file_diff(step)
    if diff is not None:
        return diff
    return list(
        difflib.unified_diff(
            (step.change.before or "").splitlines(),
            (step.change.after or "").splitlines(),
            fromfile=f"{step.host}: {step.state_id} (now)",
            tofile=f"{step.host}: {step.state_id} (desired)",
            lineterm="",
        )
    )


def host_diff(host_plan: HostPlan) -> str:
    """A unified diff per step: the host as it is (---) against the desired state (+++)."""
    chunks: list[str] = []
    for step in host_plan.steps:
        chunks.append(f"# {step.id}: {step.description}")
        chunks.extend(step_diff(step))
    return "\n".join(chunks)


def _override_out(override: FreezeOverride | None) -> FreezeOverrideOut | None:
    if override is None:
        return None
    return FreezeOverrideOut(plan_id=override.plan_id, reason=override.reason,
                             actor=override.actor, at=override.at)  # fmt: skip


def plan_detail(
    record: PlanRecord,
    approvals: list[ApprovalRecord],
    run_ids: list[str],
    hold: Hold | None = None,
    override: FreezeOverride | None = None,
) -> PlanDetail:
    summary = plan_summary(record)
    hosts = {
        name: HostPlanOut(
            host=hp.host,
            facts_digest=hp.facts_digest,
            reachable=hp.reachable,
            unknown_reason=hp.unknown_reason,
            blocked=hp.blocked,
            diff=host_diff(hp),
            steps=[_step_out(s) for s in hp.steps],
            skipped=[SkippedOut(state_id=s.state_id, reason=s.reason) for s in hp.skipped],
        )
        for name, hp in sorted(record.plan.hosts.items())
    }
    return PlanDetail(
        **summary.model_dump(),
        fact_digests={n: hp.facts_digest for n, hp in sorted(record.plan.hosts.items())},
        hosts=hosts,
        approvals=[
            ApprovalOut(decision=a.decision, actor=a.actor, comment=a.comment, at=a.at)
            for a in approvals
        ],
        runs=run_ids,
        waiting=hold.reason if hold else None,
        waiting_until=stamp(hold.until) if hold and hold.until else None,
        freeze_override=_override_out(override),
    )


def issues_out(errors: list[dict[str, Any]]) -> list[ConfigIssueOut]:
    return [ConfigIssueOut.model_validate(e) for e in errors]


def cluster_out(record: ClusterRecord, last_plan: PlanRecord | None) -> ClusterOut:
    return ClusterOut(
        name=record.name,
        head_revision=record.head_revision,
        planned_revision=record.planned_revision,
        applied_revision=record.applied_revision,
        in_sync=record.in_sync,
        last_plan=plan_summary(last_plan) if last_plan else None,
        drift=DriftOut.model_validate(record.drift) if record.drift else None,
        errors=issues_out(record.errors),
        errors_revision=record.errors_revision,
        last_error=record.last_error,
        checked_at=record.checked_at,
    )


def _result_out(r: StepResultRecord) -> StepResultOut:
    return StepResultOut(
        seq=r.seq,
        host=r.host,
        step_id=r.step_id,
        name=r.name,
        result=r.result,
        comment=r.comment,
        changes=r.changes,
        output=r.output,
        rollback=r.rollback,
        at=r.at,
    )


def verification_out(result: dict[str, Any] | None) -> VerificationOut | None:
    """The verification part of a stored run summary, or None if none ran."""
    data = (result or {}).get("verification")
    if not isinstance(data, dict):
        return None
    return VerificationOut(
        ok=bool(data.get("ok")),
        clients=list(data.get("clients", [])),
        distribution=data.get("distribution", {}),
        services=[_service_out(s) for s in data.get("services", [])],
        arp=[_arp_out(a) for a in data.get("arp", [])],
        failures=[VerificationFailureOut.model_validate(f) for f in data.get("failures", [])],
        notes=list(data.get("notes", [])),
        elapsed=float(data.get("elapsed", 0.0)),
    )


def _service_out(data: dict[str, Any]) -> ServiceTrafficOut:
    return ServiceTrafficOut(
        **{k: data.get(k) for k in ServiceTrafficOut.model_fields if k != "real_servers"},
        real_servers=[
            RealServerTrafficOut(
                host=rs["host"],
                weight=int(rs.get("weight", 0)),
                received=rs.get("received"),
                answered=int(rs.get("answered", 0)),
            )
            for rs in data.get("real_servers", [])
        ],
    )


def _arp_out(data: dict[str, Any]) -> ArpCheckOut:
    return ArpCheckOut(
        **{k: data.get(k) for k in ArpCheckOut.model_fields if k != "responders"},
        responders={r["mac"]: r.get("host") for r in data.get("responders", [])},
    )


def run_out(
    run: RunRecord, results: list[StepResultRecord], backups: list[BackupRecord]
) -> RunOut:
    return RunOut(
        id=run.id,
        plan_id=run.plan_id,
        clusters=run.cluster.split(","),
        state=run.state,
        actor=run.actor,
        started_at=run.started_at,
        finished_at=run.finished_at,
        ok=run.ok,
        error=run.error,
        steps=[_result_out(r) for r in results if not r.rollback],
        rollbacks=[_result_out(r) for r in results if r.rollback],
        result=run.result,
        recovery=run.recovery,
        backups=[
            BackupOut(host=b.host, location=b.location, detail=b.detail, at=b.at) for b in backups
        ],
        verification=verification_out(run.result),
    )


def facts_out(record: HostFactsRecord) -> HostFactsOut:
    return HostFactsOut(
        host=record.host, digest=record.digest, gathered_at=record.gathered_at, facts=record.facts
    )


def audit_out(record: AuditRecord) -> AuditOut:
    return AuditOut(
        id=record.id,
        at=record.at,
        actor=record.actor,
        action=record.action,
        cluster=record.cluster,
        plan_id=record.plan_id,
        run_id=record.run_id,
        detail=record.detail,
    )
