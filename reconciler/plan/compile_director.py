"""What the director backends' compilers share: ids, phases, the facts they read, common states.

Each backend compiles in its own module (`compile_ipvsadm`, `compile_nftables`,
`compile_keepalived`); `reconciler.plan.compile.compile_directors` runs them in that order.

Every IPVS director (ipvsadm and keepalived) gets `kmod.present` for ip_vs (packages phase) and
the IPVS sysctls a graceful drain needs (`IPVS_SYSCTLS`), set in its own phase before its IPVS
changes. In Direct Routing IPVS sees only the client's half of a connection, so a closed one
stays in its table (FIN_WAIT) for two minutes; a client that reuses the source port within them
is sent to the same real server, even one drained to weight 0 (so the drain never ends), and
after the real server is deleted its SYNs are silently dropped (a lost request).
`expire_nodest_conn = 1` reschedules such a SYN and expires the deleted server's entries;
`expire_quiescent_template = 1` does the same for the persistence templates of a weight-0 server.
(Measured in tests/lab/test_ipvs_vm_ipvsadm.py: without them, 17 of 3760 requests lost during a
drain and removal; with them, none.) shoal.toml's [ipvs] can turn either off; the key is then
kept at 0, the kernel's default.

Backup directors' states are in Phase.DIRECTOR_BACKUP, primaries' in Phase.DIRECTOR_PRIMARY (a
host that is primary of any cluster counts as primary). Removals come from the host's ledger
(only what shoal created goes away) and the facts; an unknown ledger or IPVS table plans no
removal and says so (`director.skipped`).

Every low state carries `ledger`, as `states.args.LedgerOp`s: `remove` ops apply once the
state's steps succeeded (or it was in sync); `add` ops only name what the state would own. It
owns only what it creates (the state's claims) or what an adopting host hands over
(`reconciler.plan.adoption`): a hand-made IPVS service, DSR table or keepalived real server that
already matches the repository stays foreign without `adopt`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from reconciler.desired.models import Cluster, Desired, address_order, family_of
from reconciler.facts.hostfacts import HostFacts, IpvsTable, Ledger
from reconciler.facts.script import IPVS_MODULE_DEFAULTS
from reconciler.plan.steps import LowState, Phase
from states import addr, director, kmod, sysctl
from states.args import Args, LedgerOp, low_args

LEDGER_IPVS_SERVICE = "ipvs.service_present"
LEDGER_IPVS_DEST = "ipvs.real_server_present"
LEDGER_KEEPALIVED_RS = "keepalived.real_server"
LEDGER_NFT_TABLE = "nft.dsr_table"
KMOD_IPVS = "kmod-ip_vs"
IPVS_SYSCTLS = ("net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.expire_quiescent_template")


def sid(*parts: object) -> str:
    """A low state id from its parts (valid as a `[[state]]` requisite name)."""
    return ":".join(str(p) for p in parts).replace(" ", ":")


IPVS_SYSCTL_IDS = tuple(sid("ipvs-sysctl", key) for key in IPVS_SYSCTLS)


def low_state(
    sid: str,
    function: str,
    host: str,
    args: Args,
    phase: Phase,
    require: tuple[str, ...] = (),
) -> LowState:
    """A director low state with typed args, stored as the plain data plans serialize."""
    return LowState(
        id=sid, function=function, host=host, args=low_args(args), require=require, phase=phase
    )


def ledger(
    function: str, op: Literal["add", "remove", "replace"], keys: list[str]
) -> tuple[LedgerOp, ...]:
    """A director state's ledger update: one op on its function's keys."""
    return (LedgerOp(function=function, op=op, keys=tuple(keys)),)


def _ipvs_sysctl_values(desired: Desired) -> dict[str, str]:
    """The drain sysctls' values from shoal.toml's [ipvs] (both on by default)."""
    ipvs_settings = desired.settings.ipvs
    on = (ipvs_settings.expire_nodest_conn, ipvs_settings.expire_quiescent_template)
    return {key: "1" if enabled else "0" for key, enabled in zip(IPVS_SYSCTLS, on, strict=True)}


def ipvs_sysctl_states(
    desired: Desired, host: str, phase: Phase, required: bool
) -> list[LowState]:
    """ip_vs loaded in the packages phase, then the drain sysctls in the director's phase."""
    out = [
        low_state(KMOD_IPVS, kmod.FUNCTION, host, kmod.KmodArgs(name="ip_vs", required=required),
                  Phase.PACKAGES)
    ]  # fmt: skip
    for key, value in _ipvs_sysctl_values(desired).items():
        args = sysctl.SysctlArgs(key=key, value=value, module="ip_vs",
                                 module_default=IPVS_MODULE_DEFAULTS[key])  # fmt: skip
        out.append(low_state(sid("ipvs-sysctl", key), sysctl.FUNCTION, host, args, phase,
                             require=(KMOD_IPVS,)))  # fmt: skip
    return out


def host_phase(desired: Desired, host: str) -> Phase:
    for cl in desired.clusters.values():
        if cl.cluster.primary == host:
            return Phase.DIRECTOR_PRIMARY
    return Phase.DIRECTOR_BACKUP


def known_ledger(facts: Mapping[str, HostFacts], host: str) -> Ledger | str:
    """The host's ledger, or why it is unknown."""
    f = facts.get(host)
    if f is None:
        return "no facts"
    if not f.ledger.known or f.ledger.value is None:
        return f"ledger unknown ({f.ledger.unknown_reason})"
    return f.ledger.value


def known_ipvs(facts: Mapping[str, HostFacts], host: str) -> IpvsTable | str:
    """The host's IPVS table, or why it is unknown."""
    f = facts.get(host)
    if f is None:
        return "no facts"
    if not f.ipvs.known or f.ipvs.value is None:
        return f"IPVS table unknown ({f.ipvs.unknown_reason})"
    return f.ipvs.value


def skipped(host: str, what: str, reason: str, phase: Phase) -> LowState:
    return low_state(sid("director-skipped", what), director.FUNCTION, host,
                     director.SkippedArgs(reason=reason), phase)  # fmt: skip


def clusters(desired: Desired, backend: str) -> list[tuple[str, Cluster]]:
    return [
        (n, desired.clusters[n])
        for n in sorted(desired.clusters)
        if desired.clusters[n].cluster.director == backend
    ]


def vip_states(
    desired: Desired, name: str, cl: Cluster, require: Mapping[str, list[str]]
) -> list[LowState]:
    """The VIPs of a non-VRRP cluster on its primary director, after what serves them.

    A host route each: /32 for IPv4, /128 for IPv6 (added `nodad`, announced with an unsolicited
    neighbour advertisement: states.addr).
    """
    primary = cl.cluster.primary
    iface = desired.inventory.hosts[primary].interface
    out = []
    for vip in sorted({s.vip for s in cl.services}, key=address_order):
        prefix = 128 if family_of(vip) == 6 else 32
        args = addr.AddrArgs(address=vip, prefix=prefix, interface=iface, announce=True)
        vip_id = sid("director-vip", name, vip)
        out.append(low_state(vip_id, addr.FUNCTION, primary, args, Phase.DIRECTOR_PRIMARY,
                             require=tuple(require.get(vip, []))))  # fmt: skip
    return out
