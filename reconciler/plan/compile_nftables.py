"""The `nftables` director backend's low states: one DSR table per director, VIPs, removal.

One `nft.dsr_table` per director host holds all its nftables services (states.nft_dsr); the VIPs
go on the primary after it, as for ipvsadm. Real server MACs come from the real servers' facts:
one unknown MAC and the table is not planned (`director.skipped` says why). A host that is no
nftables director any more loses the table, if its ledger says shoal made it.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts, Ledger
from reconciler.plan.compile_director import (
    LEDGER_NFT_TABLE,
    clusters,
    host_phase,
    known_ledger,
    ledger,
    low_state,
    skipped,
    vip_states,
)
from reconciler.plan.compile_health import held_down, member_key
from reconciler.plan.steps import LowState
from states import nft_dsr
from states.nft_dsr_model import (
    FAMILY,
    TABLE,
    DsrServiceArgs,
    DsrTableAbsentArgs,
    DsrTableArgs,
    MemberArgs,
    macs_of,
)

NFT_TABLE_KEY = f"{FAMILY} {TABLE}"
TABLE_STATE_ID = "nft-dsr"


def compile_nftables(desired: Desired, facts: Mapping[str, HostFacts]) -> list[LowState]:
    out: list[LowState] = []
    backend = clusters(desired, "nftables")
    macs = macs_of(facts.values())
    hosts = sorted({h for _, cl in backend for h in cl.cluster.directors})
    table_ok: dict[str, bool] = {}
    for host in hosts:
        phase = host_phase(desired, host)
        held = held_down(facts, host)
        if isinstance(held, str):
            out.append(skipped(host, "nft-dsr", f"shoal-healthd state: {held}; DSR table not "
                               "planned", phase))  # fmt: skip
            table_ok[host] = False
            continue
        iface = desired.inventory.hosts[host].interface
        missing: list[str] = []
        director_mac = macs.get(host, {}).get(iface)
        if director_mac is None:
            missing.append(f"{host}:{iface}")
        services = []
        for _, cl in backend:
            if host not in cl.cluster.directors:
                continue
            for svc in cl.services:
                members = []
                for rs in sorted(svc.real_servers, key=lambda r: r.host):
                    rs_iface = desired.inventory.hosts[rs.host].interface
                    mac = macs.get(rs.host, {}).get(rs_iface)
                    if mac is None:
                        missing.append(f"{rs.host}:{rs_iface}")
                        continue
                    members.append(MemberArgs(host=rs.host, mac=mac, weight=rs.weight,
                                              held_down=member_key(svc, rs.host) in held))
                services.append(DsrServiceArgs(
                    protocol=svc.protocol, vip=svc.vip, port=svc.port,
                    persistence=svc.persistence, members=tuple(members),
                ))  # fmt: skip
        table_ok[host] = not missing
        if missing or director_mac is None:
            unknown = ", ".join(sorted(set(missing)))
            reason = f"MAC unknown for {unknown}; DSR table not planned"
            out.append(skipped(host, "nft-dsr", reason, phase))
            continue
        args = DsrTableArgs(
            interface=iface, director_mac=director_mac, services=tuple(services),
            drain_timeout=desired.settings.apply.drain_timeout,
            ledger=ledger(LEDGER_NFT_TABLE, "add", [NFT_TABLE_KEY]),
        )  # fmt: skip
        out.append(low_state(TABLE_STATE_ID, nft_dsr.FUNCTION, host, args, phase))
    for name, cl in backend:
        if table_ok.get(cl.cluster.primary):
            require = {s.vip: [TABLE_STATE_ID] for s in cl.services}
            out += vip_states(desired, name, cl, require)
    for host in sorted(facts):
        if host in hosts:
            continue
        owned = known_ledger(facts, host)
        if isinstance(owned, Ledger) and NFT_TABLE_KEY in owned.entries.get(LEDGER_NFT_TABLE, ()):
            absent = DsrTableAbsentArgs(ledger=ledger(LEDGER_NFT_TABLE, "remove", [NFT_TABLE_KEY]))
            out.append(low_state("nft-dsr-absent", nft_dsr.ABSENT_FUNCTION, host, absent,
                                 host_phase(desired, host)))  # fmt: skip
    return out


def failover_notes(desired: Desired, host: str) -> tuple[str, ...]:
    """What a plan says about connection sync on an nftables director: nothing carries the DSR
    table's flow pins to the other director. The hash of a flow is the same on both (same
    table, same buckets), so an established connection keeps its real server across a failover
    unless weights changed while it was open (its pin is then the only thing that held it)."""
    return tuple(
        f"{host}: cluster {name} asks for connection sync, which the nftables backend cannot "
        "do: flow pins stay on the director that made them; after a failover, a connection "
        "opened before the last weight change may move to another real server"
        for name, cl in clusters(desired, "nftables")
        if cl.cluster.sync.enabled and host in cl.cluster.directors
    )
