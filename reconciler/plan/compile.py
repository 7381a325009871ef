"""Compile the desired state into Salt-style low states (`compile_desired`), pure.

Like Salt's highstate -> lowstate: the cluster model becomes an ordered list of single state
calls (id, function, host, args, requisites, phase). Sources, in this order:

1. real servers, per ARP method (research notes 4.4-4.7):
   - sysctl: arp_ignore=1 and arp_announce=2 for `all` and the interface, the VIP /32 on `lo`;
   - arptables: `INPUT -d VIP -j DROP`, `OUTPUT -s VIP -j mangle --mangle-ip-s RIP`, VIP on the
     interface;
   - nft-arp: the `arp shoal_arp` table, VIP on the interface;
   - redirect: one nat REDIRECT per VIP/port/protocol, no VIP on the host.
   ARP suppression is a requisite of every VIP (suppression first, safety rule).
   An IPv6 VIP has no ARP to suppress: Neighbour Discovery is ICMPv6, which arptables and the
   nft `arp` family never see, so no filter could silence it and none is needed. Linux answers
   a Neighbour Solicitation only for an address on the interface it arrived on, and sends no
   unsolicited advertisement for an address on `lo`: with sysctl, arptables and nft-arp the
   IPv6 VIP is a /128 on `lo`, added `nodad` (nothing to detect on `lo`, and no tentative
   delay), and requires no IPv4 sysctl or ARP rule (tests/lab/test_dual_stack_nft_lab.py
   proves the silence on real hosts). With redirect it is an ip6tables nat REDIRECT, as for
   IPv4. The IPv4 suppression (sysctls, rules, table) is compiled only for IPv4 VIPs;
2. the directors (`compile_directors`: one module per backend, `reconciler.plan.compile_ipvsadm`,
   `compile_nftables`, `compile_keepalived`, sharing `reconciler.plan.compile_director`);
3. `[[state]]` extras of the cluster files;
4. the persisted form of each host's runtime states (`reconciler.plan.persistence`);
5. removals: whatever a host's ledger lists that nothing above wants any more, reverse order
   (a VIP before its ARP suppression); a host with an unknown ledger gets none. The persisted
   form is written after them.

Ids are valid `[[state]]` names, so extras can require compiled states.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping

from reconciler.desired.models import ArpMethod, Desired, address_order, family_of
from reconciler.errors import ConfigIssue, DesiredStateInvalid
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.compile_director import IPVS_SYSCTL_IDS, KMOD_IPVS
from reconciler.plan.compile_health import compile_health
from reconciler.plan.compile_ipvsadm import compile_ipvsadm
from reconciler.plan.compile_keepalived import compile_keepalived
from reconciler.plan.compile_nftables import compile_nftables
from reconciler.plan.invariants import adopted_removals
from reconciler.plan.leftovers import LEFTOVER_FILES
from reconciler.plan.persistence import RESTORE_UNIT, persistence_key, persistence_states
from reconciler.plan.steps import LowState, Phase, replace
from states.args import ArgsCache
from states.nft import arp_table_args
from states.registry import KINDS, OWNED
from states.service import wants_link
from states.sysctl import interface_key

REMOVAL_PREFIX = "remove-"
DIRECTOR_PHASES = (Phase.DIRECTOR_BACKUP, Phase.DIRECTOR_PRIMARY)
ARP_SYSCTLS = (("arp_ignore", "1"), ("arp_announce", "2"))
# tool (as the facts name it) -> Debian package, per ARP method
METHOD_PACKAGES: dict[str, dict[str, str]] = {
    "sysctl": {"ip": "iproute2", "sysctl": "procps"},
    "arptables": {"ip": "iproute2", "arptables": "arptables"},
    "nft-arp": {"ip": "iproute2", "nft": "nftables"},
    "redirect": {"iptables": "iptables"},
}


def compile_desired(
    desired: Desired, facts: Mapping[str, HostFacts] | None = None, cache: ArgsCache | None = None
) -> list[LowState]:
    """Every low state of every host, removals (from the ledgers in `facts`) included.

    `cache` holds the args validated on the way (ledger keys, the boot form); the planner passes
    the one its states read from.
    """
    facts = facts or {}
    cache = cache or ArgsCache()
    states = compile_real_servers(desired) + compile_directors(desired, facts)
    states += compile_extras(desired)
    by_host: dict[str, list[LowState]] = defaultdict(list)
    for low in states:
        by_host[low.host].append(low)
    # Hosts compiled from one template (most real servers) get one boot form, copied.
    persist: list[LowState] = []
    made: dict[tuple[object, ...], list[LowState]] = {}
    for h in sorted(by_host):
        key = persistence_key(h, by_host[h])
        if key in made:
            persist += [replace(p, host=h) for p in made[key]]
        else:
            made[key] = persistence_states(h, by_host[h], desired, cache)
            persist += made[key]
    adopted = {h: adopted_removals(desired, h, facts[h], by_host.get(h, ()))
               for h in facts if h in desired.inventory.hosts}  # fmt: skip
    removals = compile_removals(states + persist, facts, adopted, cache)
    # The persisted form is written after the removals too (their phase, their order).
    removal_ids: dict[str, tuple[str, ...]] = defaultdict(tuple)
    for low in removals:
        removal_ids[low.host] += (low.id,)
    states += removals
    states += [replace(p, require=p.require + removal_ids[p.host]) if p.host in removal_ids
               else p for p in persist]  # fmt: skip
    check_low_states(states)
    return states


def compile_directors(desired: Desired, facts: Mapping[str, HostFacts]) -> list[LowState]:
    """Every director low state of every cluster, removals included; pure and deterministic."""
    lows = (
        compile_ipvsadm(desired, facts)
        + compile_nftables(desired, facts)
        + compile_keepalived(desired, facts)
        + compile_health(desired, facts)
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


# --- real servers ---------------------------------------------------------------------------------


def _rs_hosts(desired: Desired) -> dict[str, tuple[ArpMethod, list[tuple[str, int, str]]]]:
    """host -> (ARP method, [(vip, port, protocol)]) over every cluster."""
    out: dict[str, tuple[ArpMethod, list[tuple[str, int, str]]]] = {}
    for cname in sorted(desired.clusters):
        cl = desired.clusters[cname]
        for svc in cl.services:
            for rs in svc.real_servers:
                _method, services = out.setdefault(rs.host, (cl.cluster.arp_method, []))
                # The loader refuses a host with two methods; keep the first if it did not run.
                services.append((svc.vip, svc.port, svc.protocol))
    return out


# Methods whose low states carry the real server's own address (the arptables mangle source,
# the nft-arp table); the others are the same for every host with the same services.
_RIP_METHODS = frozenset({"arptables", "nft-arp"})


def compile_real_servers(desired: Desired) -> list[LowState]:
    """Every real server's low states. Hosts with the same ARP method, services and interface
    (and address, where the method uses it) get the same low states but for the host: they are
    compiled once and copied per host, sharing their args (so `ArgsCache` parses them once)."""
    out: list[LowState] = []
    templates: dict[tuple[object, ...], list[LowState]] = {}
    for host, (method, services) in sorted(_rs_hosts(desired).items()):
        inv = desired.inventory.hosts[host]
        rip = inv.ipv4 or ""  # an IPv4 VIP's real server has an IPv4 address (crosscheck)
        key = (method, tuple(services), inv.interface, rip if method in _RIP_METHODS else None)
        template = templates.get(key)
        if template is None:
            template = templates[key] = _real_server_lows(host, method, services, inv.interface,
                                                          rip)  # fmt: skip
            out += template
        else:
            out += [replace(low, host=host) for low in template]
    return out


def _real_server_lows(host: str, method: ArpMethod, services: list[tuple[str, int, str]],
                      interface: str, rip: str) -> list[LowState]:  # fmt: skip
    out: list[LowState] = []
    vips = sorted({vip for vip, _, _ in services}, key=address_order)
    vips4 = [v for v in vips if family_of(v) == 4]

    def low(sid: str, function: str, args: Mapping[str, object], require: Iterable[str] = (),
            phase: Phase = Phase.REAL_SERVERS_PREPARE, _host: str = host) -> LowState:
        return LowState(id=sid, function=function, host=_host, args=dict(args),
                        require=tuple(require), phase=phase)  # fmt: skip

    pkg = low("pkg-lvs-dr", "pkg.installed", {"packages": METHOD_PACKAGES[method]},
              phase=Phase.PACKAGES)  # fmt: skip
    out.append(pkg)
    if method == "redirect":
        endpoints = sorted(set(services), key=lambda s: (address_order(s[0]), s[1:]))
        for vip, port, proto in endpoints:
            args: dict[str, object] = {"destination": vip, "protocol": proto, "dport": port}
            out.append(low(f"redirect-{proto}-{vip}-{port}", "iptables.rule_present", args,
                           [pkg.id]))  # fmt: skip
        return out
    # vip -> ids of the states that silence it; the VIP requires all of them. An IPv6 VIP
    # has nothing to silence (see the module docstring): it requires the packages only.
    guards: dict[str, list[str]] = {vip: [] for vip in vips}
    if method == "sysctl" and vips4:
        for scope in ("all", interface):
            for name, value in ARP_SYSCTLS:
                key = interface_key(scope, name)
                state = low(f"sysctl-{key.replace('/', '.')}", "sysctl.present",
                            {"key": key, "value": value}, [pkg.id])  # fmt: skip
                out.append(state)
                for vip in vips4:
                    guards[vip].append(state.id)
    elif method == "arptables":
        for vip in vips4:
            drop = {"chain": "INPUT", "destination": vip, "target": "DROP"}
            mangle = {"chain": "OUTPUT", "source": vip, "target": "mangle",
                      "mangle_ip_s": rip}  # fmt: skip
            out.append(low(f"arptables-input-{vip}", "arptables.rule_present", drop, [pkg.id]))
            out.append(low(f"arptables-output-{vip}", "arptables.rule_present", mangle,
                           [pkg.id]))  # fmt: skip
            guards[vip] += [f"arptables-input-{vip}", f"arptables-output-{vip}"]
    elif method == "nft-arp" and vips4:
        table = low("nft-arp-shoal_arp", "nft.table_present",
                    arp_table_args(vips4, rip), [pkg.id])  # fmt: skip
        out.append(table)
        for vip in vips4:
            guards[vip].append(table.id)
    # arp_ignore=1 only hides addresses not on the receiving interface: the sysctl method's
    # IPv4 VIP sits on lo; the other methods' rules silence it on the interface itself.
    vip4_dev = "lo" if method == "sysctl" else interface
    for vip in vips:
        six = family_of(vip) == 6
        out.append(low(f"vip-{vip}", "addr.present",
                       {"address": vip, "prefix": 128 if six else 32,
                        "interface": "lo" if six else vip4_dev},
                       guards[vip] or ([pkg.id] if six else [])))  # fmt: skip
    return out


# --- [[state]] extras -----------------------------------------------------------------------------


def compile_extras(desired: Desired) -> list[LowState]:
    out = []
    for cname in sorted(desired.clusters):
        for extra in desired.clusters[cname].states:
            for host in extra.hosts:
                out.append(
                    LowState(
                        id=extra.id, function=extra.function, host=host, args=dict(extra.args),
                        require=extra.require, watch=extra.watch, onchanges=extra.onchanges,
                        phase=Phase.EXTRA, origin=f"clusters/{cname}.toml:state.{extra.id}",
                    )
                )  # fmt: skip
    return out


# --- removals from the ledger ---------------------------------------------------------------------

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def removal_id(function: str, key: str) -> str:
    kind = function.split(".", 1)[0]
    return REMOVAL_PREFIX + kind + "-" + _UNSAFE_ID_CHARS.sub("_", key).strip("_")


def compile_removals(
    states: list[LowState],
    facts: Mapping[str, HostFacts],
    adopted: Mapping[str, Mapping[str, set[str]]] | None = None,
    cache: ArgsCache | None = None,
) -> list[LowState]:
    """Absent states for what each host's ledger lists and no state wants any more.

    `adopted` adds, per host, what shoal takes over from an operator to remove it (a hand-added
    VIP breaking a safety rule, `reconciler.plan.invariants.adopted_removals`), in the same order.
    A host whose ledger is unknown gets none (the planner says why). On one host, removals run
    in `removal_rank` order: every removal requires those of a lower rank.
    """
    wanted: dict[str, set[tuple[str, str]]] = defaultdict(set)
    # address -> hosts that will hold it as a director VIP (added in a director phase)
    director_vips: dict[str, set[str]] = defaultdict(set)
    # Hosts that are directors in the desired state: only their VIPs can move between directors.
    directors = {low.host for low in states if low.phase in DIRECTOR_PHASES}
    cache = cache or ArgsCache()
    for low in states:
        kind = KINDS.get(low.function)
        key = kind.ledger_key(low, cache) if kind is not None else None
        if key is not None:
            wanted[low.host].add((low.function, key))
        if low.function == "addr.present" and low.phase >= Phase.DIRECTOR_BACKUP:
            director_vips[str(low.args.get("address"))].add(low.host)
    out: list[LowState] = []
    for host in sorted(facts):
        ledger = facts[host].ledger
        if not ledger.known or ledger.value is None:
            continue
        removals: list[tuple[int, LowState]] = []
        used: set[str] = set()
        entries = {f: set(k) for f, k in ledger.value.entries.items()}
        for function, keys in (adopted or {}).get(host, {}).items():
            entries.setdefault(function, set()).update(keys)
        for function, keys in sorted(entries.items()):
            owner = OWNED.get(function)
            if owner is None:
                continue  # another compiler's entries (directors) are theirs to remove
            for key in sorted(set(keys)):
                if (function, key) in wanted[host]:
                    continue
                sid = removal_id(function, key)
                while sid in used:  # two keys that read the same once made id-safe
                    sid += "_"
                used.add(sid)
                low = LowState(
                    id=sid, function=owner.absent, host=host,
                    args={"key": key},
                    phase=_removal_phase(function, key, host, director_vips, directors),
                    origin="ledger",
                )  # fmt: skip
                removals.append((owner.removal_rank, low))
        for rank, low in removals:
            before = tuple(other.id for r, other in removals if r < rank)
            out.append(replace(low, require=before))
    return out


def _removal_phase(
    function: str,
    key: str,
    host: str,
    director_vips: Mapping[str, set[str]],
    directors: set[str],
) -> Phase:
    """Removals go last, except a VIP moving to another director.

    Its old holder drops it before the new primary adds it (DIRECTOR_BACKUP runs before
    DIRECTOR_PRIMARY): two hosts holding one VIP answer ARP for it in turn (an ARP fight) and
    split the clients between them. A short gap with no holder is the lesser harm.
    A real server's VIP (same address, on lo or behind ARP suppression) is no such move: it
    goes last, after the directors stopped sending it new flows and drained it.
    """
    if function == "addr.present" and host in directors:
        address = key.split("/", 1)[0]
        if director_vips.get(address, set()) - {host}:
            return Phase.DIRECTOR_BACKUP
    return Phase.REAL_SERVERS_CLEANUP


# --- checks ---------------------------------------------------------------------------------------


def check_low_states(states: list[LowState]) -> None:
    """Unique ids per host, known functions, requisites naming states of the same host."""
    issues: list[ConfigIssue] = []
    ids: dict[str, dict[str, LowState]] = defaultdict(dict)
    for low in states:
        where = low.origin.partition(":")[0]
        if low.function not in KINDS:
            issues.append(ConfigIssue(where, f"{low.id}: unknown state function {low.function!r}"))
        seen = ids[low.host].get(low.id)
        if seen is not None:
            issues.append(ConfigIssue(where, f"state id {low.id!r} is used twice on {low.host}"
                                      f" ({seen.origin} and {low.origin})"))  # fmt: skip
        ids[low.host][low.id] = low
    for low in states:
        for kind in ("require", "watch", "onchanges"):
            for target in getattr(low, kind):
                if target not in ids[low.host]:
                    issues.append(ConfigIssue(
                        low.origin.partition(":")[0],
                        f"{low.id} on {low.host}: {kind} {target!r} names no state on that host",
                    ))  # fmt: skip
    if issues:
        raise DesiredStateInvalid(issues)


def managed_paths(desired: Desired) -> dict[str, list[str]]:
    """Per inventory host, every file path a plan compares (the facts script's `files`).

    The persistence files, the restore unit's enable link and shoal's own working files (ledger,
    director nft files) are asked of every host, so a host that left every cluster still shows
    what shoal left there.
    """
    always = {wants_link(RESTORE_UNIT), *LEFTOVER_FILES}
    out: dict[str, set[str]] = {h: set(always) for h in desired.inventory.hosts}
    for low in compile_desired(desired):
        if low.function == "file.managed" and isinstance(low.args.get("path"), str):
            out.setdefault(low.host, set()).add(low.args["path"])
        if low.function == "service.enabled" and isinstance(low.args.get("name"), str):
            out.setdefault(low.host, set()).add(wants_link(low.args["name"]))
    return {h: sorted(p) for h, p in sorted(out.items())}
