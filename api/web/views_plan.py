"""What a plan's page shows: why it was made, each host's steps in phase order with their
unified diffs (the API's `step_diff`), counts per host, and the plan that replaced a stale one.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.schemas import step_diff
from reconciler.plan.steps import HostPlan, Phase
from reconciler.server.store.database import Store
from reconciler.server.store.records import PlanRecord

PHASE_WORDS = {
    Phase.PACKAGES: "packages",
    Phase.REAL_SERVERS_PREPARE: "real servers: prepare (ARP suppression, then the VIP)",
    Phase.DIRECTOR_BACKUP: "backup director",
    Phase.DIRECTOR_PRIMARY: "primary director",
    Phase.REAL_SERVERS_CLEANUP: "real servers: clean up (after the directors let go)",
    Phase.EXTRA: "extra states",
}

WHY = {
    "change": "a revision of the repository not applied yet differs from the hosts",
    "drift": "the hosts moved away from the applied revision (drift found between commits)",
    "heal": "drift found, healed by the cluster's policy",
}


@dataclass(frozen=True, slots=True)
class StepView:
    id: str
    phase: str
    subsystem: str
    description: str
    diff: list[str]


@dataclass(frozen=True, slots=True)
class HostView:
    host: str
    steps: list[StepView]
    added: int
    removed: int
    blocked: str | None
    unreachable: str | None
    notes: list[str]
    violations: list[str]


def phase_label(phase: Phase) -> str:
    return f"{int(phase)} {PHASE_WORDS.get(phase, phase.name.lower())}"


def host_view(hp: HostPlan) -> HostView:
    steps = [
        StepView(s.id, phase_label(s.phase), s.subsystem, s.description, step_diff(s))
        for s in sorted(hp.steps, key=lambda s: s.phase)  # stable: keeps the host's order
    ]
    lines = [line for s in steps for line in s.diff if not line.startswith(("+++", "---"))]
    return HostView(
        host=hp.host,
        steps=steps,
        added=sum(line.startswith("+") for line in lines),
        removed=sum(line.startswith("-") for line in lines),
        blocked=hp.blocked,
        unreachable=None if hp.reachable else (hp.unknown_reason or "unreachable"),
        notes=list(hp.notes),
        violations=list(hp.violations),
    )


def hosts_in_phase_order(record: PlanRecord) -> list[HostView]:
    """Hosts with steps first, ordered by the phase of their first step (real servers, then
    the backup director, then the primary), then the rest by name."""

    def key(hp: HostPlan) -> tuple[int, int, str]:
        first = min((int(s.phase) for s in hp.steps), default=10**6)
        return (0 if hp.steps else 1, first, hp.host)

    return [host_view(hp) for hp in sorted(record.plan.hosts.values(), key=key)]


def successor(store: Store, record: PlanRecord) -> PlanRecord | None:
    """The plan made after a stale or superseded one for the same clusters: the one to look
    at (and approve) instead."""
    if record.state not in ("stale", "superseded"):
        return None
    later = [
        p
        for p in store.list_plans(cluster=record.cluster.split(",")[0], limit=200)
        if p.cluster == record.cluster and p.created_at >= record.created_at and p.id != record.id
    ]
    return min(later, key=lambda p: p.created_at) if later else None
