"""What the overview and a cluster's history show, built from store records and the API's
schemas: the two status axes, the revision, directors and who holds each VIP, real servers.

Sync (like Argo CD's): in sync, changes pending (a new revision waits), drift found (the hosts
moved away from the applied revision). Health: the last verification, passed or failed, and
when. Who holds a VIP is read from the directors' last gathered facts (the address on their
client-facing interface, the same facts GET /hosts/{name}/facts serves) or, when it is newer,
from the last verification's ARP check (the director that answers for it after an apply).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from api.schemas import ClusterOut, PlanSummary, VerificationOut, verification_out
from reconciler.desired.models import Cluster, Desired
from reconciler.facts.hostfacts import HostFacts
from reconciler.server.source import CommitInfo
from reconciler.server.store.database import Store
from reconciler.server.store.records import ApprovalRecord, RunRecord


@dataclass(frozen=True, slots=True)
class Health:
    word: str  # "passed" | "failed" | "unknown"
    run_id: str | None = None
    at: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class VipView:
    service: str
    vip: str
    port: int
    protocol: str
    holders: list[str]
    seen_by: str  # "facts" | "ARP"
    seen_at: str
    real_servers: list[tuple[str, int]]  # (host, weight)


@dataclass(frozen=True, slots=True)
class ClusterView:
    out: ClusterOut
    sync: str  # "in sync" | "changes pending" | "drift found" | "unknown"
    health: Health
    commit: CommitInfo | None
    directors: list[str] = field(default_factory=list)
    director_backend: str = ""
    arp_method: str = ""
    vips: list[VipView] = field(default_factory=list)


def sync_word(out: ClusterOut) -> str:
    if out.drift is not None:
        return "drift found"
    if out.in_sync:
        return "in sync"
    if out.last_plan is not None and out.last_plan.state in ("pending", "approved", "applying"):
        return "changes pending"
    return "unknown" if out.in_sync is None else "changes pending"


def last_verification(store: Store, cluster: str) -> tuple[RunRecord, VerificationOut] | None:
    for run in store.list_runs(cluster=cluster, limit=50):
        verification = verification_out(run.result)
        if verification is not None:
            return run, verification
    return None


def health_of(store: Store, cluster: str) -> Health:
    found = last_verification(store, cluster)
    if found is None:
        return Health("unknown", detail="no verification has run yet")
    run, verification = found
    if verification.ok:
        return Health("passed", run.id, run.finished_at)
    first = verification.failures[0].message if verification.failures else "failed"
    return Health("failed", run.id, run.finished_at, first)


def _holders_by_facts(store: Store, directors: list[str], vip: str) -> tuple[list[str], str]:
    holders, newest = [], ""
    for director in directors:
        record = store.get_host_facts(director)
        if record is None:
            continue
        newest = max(newest, record.gathered_at)
        facts = HostFacts.model_validate(record.facts)
        links = facts.interfaces.value or ()
        if any(
            link.name != "lo" and any(a.address == vip for a in link.addresses) for link in links
        ):
            holders.append(director)
    return holders, newest


def vip_holders(
    store: Store,
    directors: list[str],
    vip: str,
    verified: tuple[RunRecord, VerificationOut] | None,
) -> tuple[list[str], str, str]:
    """Who holds `vip`, as seen by whichever look is newer: the directors' facts (gathered
    before each plan) or the last verification's ARP check (after each apply).
    Returns (holders, how it was seen, when)."""
    holders, gathered = _holders_by_facts(store, directors, vip)
    if verified is not None:
        run, verification = verified
        checks = [a for a in verification.arp if a.vip == vip and a.director is not None]
        if checks and (run.finished_at or "") > gathered:
            return sorted({a.director for a in checks if a.director}), "ARP", run.finished_at or ""
    return holders, "facts", gathered


def vips_of(
    store: Store, cluster: Cluster, verified: tuple[RunRecord, VerificationOut] | None
) -> list[VipView]:
    directors = list(cluster.cluster.directors)
    views = []
    for s in cluster.services:
        holders, seen_by, seen_at = vip_holders(store, directors, str(s.vip), verified)
        views.append(
            VipView(
                service=s.name,
                vip=str(s.vip),
                port=s.port,
                protocol=s.protocol,
                holders=holders,
                seen_by=seen_by,
                seen_at=seen_at,
                real_servers=[(rs.host, rs.weight) for rs in s.real_servers],
            )
        )
    return views


def cluster_view(
    store: Store, out: ClusterOut, desired: Desired | None, commit: CommitInfo | None
) -> ClusterView:
    cluster = desired.clusters.get(out.name) if desired is not None else None
    if cluster is None:
        return ClusterView(out, sync_word(out), health_of(store, out.name), commit)
    return ClusterView(
        out,
        sync_word(out),
        health_of(store, out.name),
        commit,
        directors=list(cluster.cluster.directors),
        director_backend=cluster.cluster.director,
        arp_method=cluster.cluster.arp_method,
        vips=vips_of(store, cluster, last_verification(store, out.name)),
    )


@dataclass(frozen=True, slots=True)
class HistoryRow:
    plan: PlanSummary
    approvals: list[ApprovalRecord]
    runs: list[RunRecord]


def history(store: Store, cluster: str, plans: list[PlanSummary]) -> list[HistoryRow]:
    return [
        HistoryRow(p, store.approvals_for(p.id), store.list_runs(plan_id=p.id)) for p in plans
    ]
