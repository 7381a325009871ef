"""The `ipvsadm` director backend's low states: IPVS services and real servers, VIPs, removals.

`ipvs.service_present` / `ipvs.real_server_present` on every director, and the VIPs
(`addr.present`, /32 on the director's interface) on the primary only, after its services. Every
director first gets `kmod.present` for ip_vs (packages phase): a kernel without IPVS is planned
as one clearly failing step there, before anything changes (states.kmod).

IPVS services and destinations that left (in the host's ledger, not wanted any more) are drained
and deleted (`ipvs.real_server_absent`, `ipvs.service_absent`); every destination of a service
that goes away drains first, since `-D` would cut it too.

An IPv6 service's real servers are the hosts' IPv6 addresses (`Host.address_of` the VIP's
family); its keys and argv bracket them (states.ipvs_argv).
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.compile_director import (
    IPVS_SYSCTL_IDS,
    KMOD_IPVS,
    LEDGER_IPVS_DEST,
    LEDGER_IPVS_SERVICE,
    clusters,
    host_phase,
    ipvs_sysctl_states,
    known_ipvs,
    known_ledger,
    ledger,
    low_state,
    sid,
    skipped,
    vip_states,
)
from reconciler.plan.compile_health import held_down, member_key
from reconciler.plan.steps import LowState
from states import ipvs
from states.ipvs_argv import (
    destination_key,
    protocol_of,
    real_server_address,
    service_key,
    split_endpoint,
)


def compile_ipvsadm(desired: Desired, facts: Mapping[str, HostFacts]) -> list[LowState]:
    out: list[LowState] = []
    timeout = desired.settings.apply.drain_timeout
    # Per host: wanted service keys -> their low state ids, wanted destination keys.
    wanted_svcs: dict[str, dict[str, list[str]]] = {}
    wanted_dests: dict[str, set[str]] = {}
    kmod_hosts: set[str] = set()
    for name, cl in clusters(desired, "ipvsadm"):
        vip_require: dict[str, list[str]] = {}
        for host in cl.cluster.directors:
            phase = host_phase(desired, host)
            held = held_down(facts, host)
            if host not in kmod_hosts:
                # A kernel without IPVS shows up here, first, not as a failing ipvsadm -A.
                kmod_hosts.add(host)
                out += ipvs_sysctl_states(desired, host, phase, required=True)
            for svc in sorted(cl.services, key=lambda s: s.name):
                skey = service_key(svc.protocol, svc.vip, svc.port)
                svc_id = sid("ipvs-svc", name, svc.name)
                ids = wanted_svcs.setdefault(host, {}).setdefault(skey, [])
                ids.append(svc_id)
                args = ipvs.ServiceArgs(
                    protocol=svc.protocol, vip=svc.vip, port=svc.port, scheduler=svc.scheduler,
                    persistence=svc.persistence, ledger=ledger(LEDGER_IPVS_SERVICE, "add", [skey]),
                )  # fmt: skip
                out.append(low_state(svc_id, ipvs.SERVICE_PRESENT.function, host, args, phase,
                                     require=(KMOD_IPVS, *IPVS_SYSCTL_IDS)))  # fmt: skip
                for rs in sorted(svc.real_servers, key=lambda r: r.host):
                    address = real_server_address(desired, rs.host, svc.family)
                    dkey = destination_key(svc.protocol, svc.vip, svc.port, address)
                    wanted_dests.setdefault(host, set()).add(dkey)
                    rid = sid("ipvs-rs", name, svc.name, rs.host)
                    if isinstance(held, str):
                        out.append(skipped(host, rid, f"shoal-healthd state: {held}; weight "
                                           "not planned", phase))  # fmt: skip
                        continue
                    ids.append(rid)
                    rs_args = ipvs.RealServerArgs(
                        protocol=svc.protocol, vip=svc.vip, port=svc.port, address=address,
                        weight=rs.weight, ledger=ledger(LEDGER_IPVS_DEST, "add", [dkey]),
                        held_down=member_key(svc, rs.host) in held,
                    )  # fmt: skip
                    out.append(low_state(rid, ipvs.REAL_SERVER_PRESENT.function, host, rs_args,
                                         phase, require=(svc_id,)))  # fmt: skip
                if host == cl.cluster.primary:
                    vip_require.setdefault(svc.vip, []).extend(ids)
        out += vip_states(desired, name, cl, vip_require)
    out += _removals(desired, facts, wanted_svcs, wanted_dests, timeout)
    return out


def _removals(
    desired: Desired,
    facts: Mapping[str, HostFacts],
    wanted_svcs: dict[str, dict[str, list[str]]],
    wanted_dests: dict[str, set[str]],
    timeout: float,
) -> list[LowState]:
    out: list[LowState] = []
    for host in sorted(facts):
        owned = known_ledger(facts, host)
        if isinstance(owned, str):
            if host in wanted_svcs:
                out.append(skipped(host, "ipvs", f"{owned}: no IPVS removal planned",
                                   host_phase(desired, host)))  # fmt: skip
            continue
        owned_svcs = set(owned.entries.get(LEDGER_IPVS_SERVICE, ()))
        owned_dests = set(owned.entries.get(LEDGER_IPVS_DEST, ()))
        svcs = wanted_svcs.get(host, {})
        stale_svcs = owned_svcs - set(svcs)
        stale_dests = owned_dests - wanted_dests.get(host, set())
        if not stale_svcs and not stale_dests:
            continue
        phase = host_phase(desired, host)
        table = known_ipvs(facts, host)
        if isinstance(table, str):
            out.append(skipped(host, "ipvs", f"{table}: no IPVS removal planned", phase))
            continue
        # Every destination of a service that goes away drains first: `-D` would cut them too.
        for d in table.destinations:
            skey = service_key(d.protocol, d.service_address, d.service_port)
            if skey in stale_svcs and d.port == d.service_port:
                stale_dests.add(destination_key(d.protocol, d.service_address,
                                                d.service_port, d.address))  # fmt: skip
        by_service: dict[str, list[str]] = {}
        for dkey in sorted(stale_dests):
            protocol, svc_addr, rs_addr = dkey.split(" ")
            vip, port = split_endpoint(svc_addr)
            address = split_endpoint(rs_addr)[0]
            skey = f"{protocol} {svc_addr}"
            lid = sid("ipvs-rs-absent", dkey)
            by_service.setdefault(skey, []).append(lid)
            rs_args = ipvs.RealServerAbsentArgs(
                protocol=protocol_of(protocol), vip=vip, port=int(port), address=address,
                drain_timeout=timeout, ledger=ledger(LEDGER_IPVS_DEST, "remove", [dkey]),
            )  # fmt: skip
            # Newcomers of the same service join before anyone drains, and a drain needs the
            # IPVS sysctls (reconciler.plan.compile_director) where the host keeps them.
            require = tuple(svcs.get(skey, [])) + (IPVS_SYSCTL_IDS if svcs else ())
            out.append(low_state(lid, ipvs.REAL_SERVER_ABSENT.function, host, rs_args, phase,
                                 require=require))  # fmt: skip
        for skey in sorted(stale_svcs):
            protocol, svc_addr = skey.split(" ")
            vip, port = split_endpoint(svc_addr)
            svc_args = ipvs.ServiceAbsentArgs(
                protocol=protocol_of(protocol), vip=vip, port=int(port),
                ledger=ledger(LEDGER_IPVS_SERVICE, "remove", [skey]),
            )  # fmt: skip
            out.append(low_state(sid("ipvs-svc-absent", skey), ipvs.SERVICE_ABSENT.function,
                                 host, svc_args, phase,
                                 require=tuple(by_service.get(skey, []))))  # fmt: skip
    return out
