"""Compile the director side of every cluster into low states (`compile_directors`).

Per backend:
- `ipvsadm`: `ipvs.service_present` / `ipvs.real_server_present` on every director, and the VIPs
  (`addr.present`, /32 on the director's interface) on the primary only, after its services.
  Every director first gets `kmod.present` for ip_vs (packages phase): a kernel without IPVS is
  planned as one clearly failing step there, before anything changes (states.kmod).
- `nftables`: one `nft.dsr_table` per director host (all its nftables services), VIPs as above.
  Real server MACs come from the real servers' facts; one unknown MAC and the table is not
  planned (`director.skipped` says why).
- `keepalived`: one `keepalived.config` per director host; keepalived's VRRP owns the VIPs.

Every IPVS director (ipvsadm and keepalived) also gets the IPVS sysctls a graceful drain needs
(`IPVS_SYSCTLS`), set in its own phase before its IPVS changes. In Direct Routing IPVS sees only
the client's half of a connection, so a closed one stays in its table (FIN_WAIT) for two
minutes; a client that reuses the source port within them is sent to the same real server, even
one drained to weight 0 (so the drain never ends), and after the real server is deleted its
SYNs are silently dropped (a lost request). `expire_nodest_conn = 1` reschedules such a SYN and
expires the deleted server's entries; `expire_quiescent_template = 1` does the same for the
persistence templates of a weight-0 server. (Measured in tests/lab/test_ipvs_vm_ipvsadm.py:
without them, 17 of 3760 requests lost during a drain and removal; with them, none.) shoal.toml's
[ipvs] can turn either off; the key is then kept at 0, the kernel's default.

Backup directors' states are in Phase.DIRECTOR_BACKUP, primaries' in Phase.DIRECTOR_PRIMARY (a host
that is primary of any cluster counts as primary).

Removals come from the host's ledger (only what shoal created goes away) and the facts: IPVS
services and destinations that left are drained and deleted (`ipvs.*_absent`); a keepalived real
server that left is kept at weight 0 in an intermediate config while it drains. An unknown ledger or
IPVS table plans no removal and says so.

Every low state carries `args["ledger"]`: the ledger updates the executor applies once the state's
steps succeeded (or the state was in sync): a list of {function, op: add|remove|replace, keys}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.desired.models import Cluster, Desired
from reconciler.facts.hostfacts import HostFacts, IpvsTable, Ledger
from reconciler.facts.script import IPVS_MODULE_DEFAULTS
from reconciler.plan.steps import LowState, Phase
from states import ipvs, keepalived, kmod, nft_dsr, sysctl

SKIPPED = "director.skipped"
LEDGER_IPVS_SERVICE = "ipvs.service_present"
LEDGER_IPVS_DEST = "ipvs.real_server_present"
LEDGER_KEEPALIVED_RS = "keepalived.real_server"
LEDGER_NFT_TABLE = "nft.dsr_table"
NFT_TABLE_KEY = f"{nft_dsr.FAMILY} {nft_dsr.TABLE}"
KMOD_IPVS = "kmod-ip_vs"
IPVS_SYSCTLS = ("net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.expire_quiescent_template")


def _ipvs_sysctl_values(desired: Desired) -> dict[str, str]:
    """The drain sysctls' values from shoal.toml's [ipvs] (both on by default)."""
    ipvs_settings = desired.settings.ipvs
    on = (ipvs_settings.expire_nodest_conn, ipvs_settings.expire_quiescent_template)
    return {key: "1" if enabled else "0" for key, enabled in zip(IPVS_SYSCTLS, on, strict=True)}


def _ipvs_sysctl_states(
    desired: Desired, host: str, phase: Phase, required: bool
) -> list[LowState]:
    """ip_vs loaded in the packages phase, then the drain sysctls in the director's phase."""
    out = [
        LowState(id=KMOD_IPVS, function=kmod.FUNCTION, host=host, phase=Phase.PACKAGES,
                 args={"name": "ip_vs", "required": required})
    ]  # fmt: skip
    for key, value in _ipvs_sysctl_values(desired).items():
        out.append(
            LowState(
                id=_sid("ipvs-sysctl", key), function=sysctl.FUNCTION, host=host, phase=phase,
                require=(KMOD_IPVS,),
                args={"key": key, "value": value, "module": "ip_vs",
                      "module_default": IPVS_MODULE_DEFAULTS[key]},
            )
        )  # fmt: skip
    return out


def _ledger(function: str, op: str, keys: list[str]) -> list[dict[str, Any]]:
    return [{"function": function, "op": op, "keys": keys}]


def _sid(*parts: object) -> str:
    return ":".join(str(p) for p in parts).replace(" ", ":")


IPVS_SYSCTL_IDS = tuple(_sid("ipvs-sysctl", key) for key in IPVS_SYSCTLS)


def _host_phase(desired: Desired, host: str) -> Phase:
    for cl in desired.clusters.values():
        if cl.cluster.primary == host:
            return Phase.DIRECTOR_PRIMARY
    return Phase.DIRECTOR_BACKUP


def _known_ledger(facts: Mapping[str, HostFacts], host: str) -> Ledger | str:
    f = facts.get(host)
    if f is None:
        return "no facts"
    if not f.ledger.known or f.ledger.value is None:
        return f"ledger unknown ({f.ledger.unknown_reason})"
    return f.ledger.value


def _known_ipvs(facts: Mapping[str, HostFacts], host: str) -> IpvsTable | str:
    f = facts.get(host)
    if f is None:
        return "no facts"
    if not f.ipvs.known or f.ipvs.value is None:
        return f"IPVS table unknown ({f.ipvs.unknown_reason})"
    return f.ipvs.value


def _skipped(host: str, what: str, reason: str, phase: Phase) -> LowState:
    return LowState(
        id=_sid("director-skipped", what), function=SKIPPED, host=host,
        args={"reason": reason}, phase=phase,
    )  # fmt: skip


def _clusters(desired: Desired, backend: str) -> list[tuple[str, Cluster]]:
    return [
        (n, desired.clusters[n])
        for n in sorted(desired.clusters)
        if desired.clusters[n].cluster.director == backend
    ]


def _vip_states(
    desired: Desired, name: str, cl: Cluster, require: Mapping[str, list[str]]
) -> list[LowState]:
    """The VIPs of a non-VRRP cluster on its primary director, after what serves them."""
    primary = cl.cluster.primary
    iface = desired.inventory.hosts[primary].interface
    out = []
    for vip in sorted({s.vip for s in cl.services}, key=keepalived._ip_key):
        out.append(
            LowState(
                id=_sid("director-vip", name, vip), function="addr.present", host=primary,
                args={"address": vip, "prefix": 32, "interface": iface, "announce": True},
                require=tuple(require.get(vip, [])), phase=Phase.DIRECTOR_PRIMARY,
            )
        )  # fmt: skip
    return out


# --- ipvsadm --------------------------------------------------------------------------------------


def _compile_ipvsadm(desired: Desired, facts: Mapping[str, HostFacts]) -> list[LowState]:
    out: list[LowState] = []
    timeout = desired.settings.apply.drain_timeout
    # Per host: wanted service keys -> their low state ids, wanted destination keys.
    wanted_svcs: dict[str, dict[str, list[str]]] = {}
    wanted_dests: dict[str, set[str]] = {}
    kmod_hosts: set[str] = set()
    for name, cl in _clusters(desired, "ipvsadm"):
        vip_require: dict[str, list[str]] = {}
        for host in cl.cluster.directors:
            phase = _host_phase(desired, host)
            if host not in kmod_hosts:
                # A kernel without IPVS shows up here, first, not as a failing ipvsadm -A.
                kmod_hosts.add(host)
                out += _ipvs_sysctl_states(desired, host, phase, required=True)
            for svc in sorted(cl.services, key=lambda s: s.name):
                skey = ipvs.service_key(svc.protocol, svc.vip, svc.port)
                sid = _sid("ipvs-svc", name, svc.name)
                ids = wanted_svcs.setdefault(host, {}).setdefault(skey, [])
                ids.append(sid)
                out.append(
                    LowState(
                        id=sid, function="ipvs.service_present", host=host, phase=phase,
                        require=(KMOD_IPVS, *IPVS_SYSCTL_IDS),
                        args={
                            "protocol": svc.protocol, "vip": svc.vip, "port": svc.port,
                            "scheduler": svc.scheduler, "persistence": svc.persistence,
                            "ledger": _ledger(LEDGER_IPVS_SERVICE, "add", [skey]),
                        },
                    )
                )  # fmt: skip
                for rs in sorted(svc.real_servers, key=lambda r: r.host):
                    address = desired.inventory.hosts[rs.host].address
                    dkey = ipvs.destination_key(svc.protocol, svc.vip, svc.port, address)
                    wanted_dests.setdefault(host, set()).add(dkey)
                    rid = _sid("ipvs-rs", name, svc.name, rs.host)
                    ids.append(rid)
                    out.append(
                        LowState(
                            id=rid, function="ipvs.real_server_present", host=host,
                            phase=phase, require=(sid,),
                            args={
                                "protocol": svc.protocol, "vip": svc.vip, "port": svc.port,
                                "address": address, "weight": rs.weight,
                                "ledger": _ledger(LEDGER_IPVS_DEST, "add", [dkey]),
                            },
                        )
                    )  # fmt: skip
                if host == cl.cluster.primary:
                    vip_require.setdefault(svc.vip, []).extend(ids)
        out += _vip_states(desired, name, cl, vip_require)
    out += _ipvs_removals(desired, facts, wanted_svcs, wanted_dests, timeout)
    return out


def _ipvs_removals(
    desired: Desired,
    facts: Mapping[str, HostFacts],
    wanted_svcs: dict[str, dict[str, list[str]]],
    wanted_dests: dict[str, set[str]],
    timeout: float,
) -> list[LowState]:
    out: list[LowState] = []
    for host in sorted(facts):
        ledger = _known_ledger(facts, host)
        if isinstance(ledger, str):
            if host in wanted_svcs:
                out.append(_skipped(host, "ipvs", f"{ledger}: no IPVS removal planned",
                                    _host_phase(desired, host)))  # fmt: skip
            continue
        owned_svcs = set(ledger.entries.get(LEDGER_IPVS_SERVICE, ()))
        owned_dests = set(ledger.entries.get(LEDGER_IPVS_DEST, ()))
        svcs = wanted_svcs.get(host, {})
        stale_svcs = owned_svcs - set(svcs)
        stale_dests = owned_dests - wanted_dests.get(host, set())
        if not stale_svcs and not stale_dests:
            continue
        phase = _host_phase(desired, host)
        table = _known_ipvs(facts, host)
        if isinstance(table, str):
            out.append(_skipped(host, "ipvs", f"{table}: no IPVS removal planned", phase))
            continue
        # Every destination of a service that goes away drains first: `-D` would cut them too.
        for d in table.destinations:
            skey = ipvs.service_key(d.protocol, d.service_address, d.service_port)
            if skey in stale_svcs and d.port == d.service_port:
                stale_dests.add(ipvs.destination_key(d.protocol, d.service_address,
                                                     d.service_port, d.address))  # fmt: skip
        by_service: dict[str, list[str]] = {}
        for dkey in sorted(stale_dests):
            protocol, svc_addr, rs_addr = dkey.split(" ")
            vip, port = svc_addr.rsplit(":", 1)
            address = rs_addr.rsplit(":", 1)[0]
            skey = f"{protocol} {svc_addr}"
            lid = _sid("ipvs-rs-absent", dkey)
            by_service.setdefault(skey, []).append(lid)
            out.append(
                LowState(
                    id=lid, function="ipvs.real_server_absent", host=host, phase=phase,
                    # Newcomers of the same service join before anyone drains, and a drain
                    # needs the IPVS sysctls (module docstring) where the host keeps them.
                    require=tuple(svcs.get(skey, [])) + (IPVS_SYSCTL_IDS if svcs else ()),
                    args={
                        "protocol": protocol, "vip": vip, "port": int(port), "address": address,
                        "drain_timeout": timeout,
                        "ledger": _ledger(LEDGER_IPVS_DEST, "remove", [dkey]),
                    },
                )
            )  # fmt: skip
        for skey in sorted(stale_svcs):
            protocol, svc_addr = skey.split(" ")
            vip, port = svc_addr.rsplit(":", 1)
            out.append(
                LowState(
                    id=_sid("ipvs-svc-absent", skey), function="ipvs.service_absent",
                    host=host, phase=phase, require=tuple(by_service.get(skey, [])),
                    args={
                        "protocol": protocol, "vip": vip, "port": int(port),
                        "ledger": _ledger(LEDGER_IPVS_SERVICE, "remove", [skey]),
                    },
                )
            )  # fmt: skip
    return out


# --- nftables -------------------------------------------------------------------------------------


def _compile_nftables(desired: Desired, facts: Mapping[str, HostFacts]) -> list[LowState]:
    out: list[LowState] = []
    clusters = _clusters(desired, "nftables")
    macs = nft_dsr.macs_of(facts.values())
    hosts = sorted({h for _, cl in clusters for h in cl.cluster.directors})
    table_ok: dict[str, bool] = {}
    for host in hosts:
        phase = _host_phase(desired, host)
        iface = desired.inventory.hosts[host].interface
        missing: list[str] = []
        director_mac = macs.get(host, {}).get(iface)
        if director_mac is None:
            missing.append(f"{host}:{iface}")
        services = []
        for _, cl in clusters:
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
                    members.append({"host": rs.host, "mac": mac, "weight": rs.weight})
                services.append({
                    "protocol": svc.protocol, "vip": svc.vip, "port": svc.port,
                    "persistence": svc.persistence, "members": members,
                })  # fmt: skip
        table_ok[host] = not missing
        if missing:
            unknown = ", ".join(sorted(set(missing)))
            reason = f"MAC unknown for {unknown}; DSR table not planned"
            out.append(_skipped(host, "nft-dsr", reason, phase))
            continue
        out.append(
            LowState(
                id="nft-dsr", function=nft_dsr.FUNCTION, host=host, phase=phase,
                args={
                    "interface": iface, "director_mac": director_mac, "services": services,
                    "drain_timeout": desired.settings.apply.drain_timeout,
                    "ledger": _ledger(LEDGER_NFT_TABLE, "add", [NFT_TABLE_KEY]),
                },
            )
        )  # fmt: skip
    for name, cl in clusters:
        if table_ok.get(cl.cluster.primary):
            require = {s.vip: ["nft-dsr"] for s in cl.services}
            out += _vip_states(desired, name, cl, require)
    # A host that is no nftables director any more loses the table, if shoal made it.
    for host in sorted(facts):
        if host in hosts:
            continue
        ledger = _known_ledger(facts, host)
        if isinstance(ledger, Ledger) and NFT_TABLE_KEY in ledger.entries.get(LEDGER_NFT_TABLE, ()):
            out.append(
                LowState(
                    id="nft-dsr-absent", function=nft_dsr.ABSENT_FUNCTION, host=host,
                    phase=_host_phase(desired, host),
                    args={"ledger": _ledger(LEDGER_NFT_TABLE, "remove", [NFT_TABLE_KEY])},
                )
            )  # fmt: skip
    return out


# --- keepalived -----------------------------------------------------------------------------------


def _compile_keepalived(desired: Desired, facts: Mapping[str, HostFacts]) -> list[LowState]:
    out: list[LowState] = []
    hosts = sorted({h for _, cl in _clusters(desired, "keepalived") for h in cl.cluster.directors})
    for host in hosts:
        phase = _host_phase(desired, host)
        # keepalived without IPVS still runs VRRP: the module is optional here.
        out += _ipvs_sysctl_states(desired, host, phase, required=False)
        wanted = keepalived.desired_rs_keys(desired, host)
        args: dict[str, Any] = {
            "path": keepalived.CONF_PATH,
            "content": keepalived.render_keepalived_conf(desired, host),
            "drain_timeout": desired.settings.apply.drain_timeout,
            "ledger": _ledger(LEDGER_KEEPALIVED_RS, "replace", sorted(wanted)),
        }
        ledger = _known_ledger(facts, host)
        if isinstance(ledger, str):
            # Without the ledger we cannot tell which real servers would leave undrained.
            args["skip_reason"] = f"{ledger}: keepalived.conf not planned"
        else:
            leaving = sorted(set(ledger.entries.get(LEDGER_KEEPALIVED_RS, ())) - wanted)
            if leaving:
                args["drain_content"] = keepalived.render_keepalived_conf(desired, host, leaving)
                drains = []
                for key in leaving:
                    parsed = keepalived.parse_rs_key(key)
                    if parsed is not None:
                        protocol, vip, port, address = parsed
                        drains.append({
                            "service": ipvs.service_key(protocol, vip, port),
                            "real_server": f"{address}:{port}",
                        })  # fmt: skip
                args["drains"] = drains
        out.append(
            LowState(id="keepalived-conf", function=keepalived.FUNCTION, host=host, phase=phase,
                     args=args, require=IPVS_SYSCTL_IDS)
        )  # fmt: skip
    return out


def compile_directors(desired: Desired, facts: Mapping[str, HostFacts]) -> list[LowState]:
    """Every director low state of every cluster, removals included; pure and deterministic."""
    lows = (
        _compile_ipvsadm(desired, facts)
        + _compile_nftables(desired, facts)
        + _compile_keepalived(desired, facts)
    )
    # A host directing both an ipvsadm and a keepalived cluster loads ip_vs and sets its sysctls
    # once: the ipvsadm backend's states come first, and its module is the required one.
    once = {KMOD_IPVS, *IPVS_SYSCTL_IDS}
    seen: set[tuple[str, str]] = set()
    out = []
    for low in lows:
        if low.id in once:
            if (low.host, low.id) in seen:
                continue
            seen.add((low.host, low.id))
        out.append(low)
    return out
