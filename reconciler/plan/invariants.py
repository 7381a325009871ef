"""The LVS-DR safety invariants, checked on every host's facts in every plan (`check_host`).

DESIGN.md's rule: only the active director answers or announces ARP for a VIP. The states keep
it for what shoal made; these checks keep it whoever made the state. A host that is not a
director of a VIP's cluster must not hold that VIP on an interface other than `lo` unless ARP
rules cover it in both directions: an INPUT rule dropping requests for it and an OUTPUT rule
rewriting ARP it sends with the VIP as sender (`arptables -s VIP -j mangle`, or the nft-arp
table). `arp_ignore=1` does not hide an address on the receiving interface, and the seed
HOWTO's `-A OUTPUT -d VIP -j mangle` form rewrites nothing the host sends as the VIP
(research notes 4.4), so neither counts. An IPv6 VIP on such an interface is always a
violation: Linux answers Neighbour Solicitations for it there, and no ARP rule or table sees
Neighbour Discovery (ICMPv6), so nothing can cover it; on `lo` it is silent.

The check runs twice: on the facts as they are, and on the facts as the plan's steps leave them.
A violation after the plan refuses the host (the planner drops its steps); one that the plan
fixes, and a seed-form rule left in place, become notes. `kept_suppression` is what keeps a
removal from taking away the suppression of a VIP that stays on the host.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.desired.models import Desired, family_of
from reconciler.facts.hostfacts import ArpRule, HostFacts
from reconciler.plan.steps import LowState, Step
from states import addr, arptables, nft
from states.nft import ARP_TABLE

_ARP_TABLE_KEY = nft.key_of("arp", ARP_TABLE)


@dataclass(frozen=True, slots=True)
class _Rule:
    """An arptables rule reduced to what decides whether it silences one address."""

    chain: str
    target: str
    source: str | None
    destination: str | None
    plain: bool  # no interface, MAC or other match narrowing it
    text: str
    mangle: str | None = None


@dataclass(frozen=True, slots=True)
class Findings:
    violations: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


# --- which VIPs a host must not answer for --------------------------------------------------------


def guarded_vips(desired: Desired, host: str) -> frozenset[str]:
    """Every VIP of a cluster the host is not a director of."""
    every, directed = _vips_of(desired)
    mine = directed.get(host)
    return every if mine is None else every - mine


# id(desired) -> (weak reference, (every VIP, director -> the VIPs it directs)). A plan asks for
# every host's guarded VIPs; walking every service of every cluster per host made that
# quadratic (10,000 real servers x 200 services).
_VIPS: dict[int, tuple[weakref.ref[Desired], tuple[frozenset[str], dict[str, frozenset[str]]]]] = {}


def _vips_of(desired: Desired) -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    entry = _VIPS.get(id(desired))
    if entry is not None and entry[0]() is desired:
        return entry[1]
    every: set[str] = set()
    directed: dict[str, set[str]] = {}
    for cluster in desired.clusters.values():
        vips = {s.vip for s in cluster.services}
        every |= vips
        for d in cluster.cluster.directors:
            directed.setdefault(d, set()).update(vips)
    value = (frozenset(every), {d: frozenset(v) for d, v in directed.items()})
    key = id(desired)
    _VIPS[key] = (weakref.ref(desired, lambda _r: _VIPS.pop(key, None)), value)
    return value


# --- reading the facts ----------------------------------------------------------------------------


def _plain(rule: ArpRule) -> bool:
    return not (
        rule.interface_in or rule.interface_out or rule.source_mac or rule.destination_mac
        or rule.mangle_ip_d or rule.mangle_mac_s or rule.mangle_mac_d or rule.extra
        or rule.opcode not in (None, "1")
    )  # fmt: skip


def _strip(address: str | None) -> str | None:
    return address.removesuffix("/32") if address else None


def _fact_rules(hf: HostFacts) -> list[_Rule] | str:
    """The host's arptables rules, or why they are unknown."""
    fact = hf.arptables
    if not fact.known or fact.value is None:
        tools = hf.tools.value if hf.tools.known and hf.tools.value is not None else {}
        if tools.get("arptables") is False:
            return []  # no arptables, so no rule
        return f"arptables rules unknown ({fact.unknown_reason})"
    return [
        _Rule(
            chain=r.chain, target=r.target.lower(), source=_strip(r.source_ip),
            destination=_strip(r.destination_ip), plain=_plain(r),
            text=" ".join(("-A", r.chain, *r.spec)), mangle=_strip(r.mangle_ip_s),
        )
        for r in fact.value.rules
    ]  # fmt: skip


def _args_rule(args: arptables.ArpRuleArgs) -> _Rule:
    return _Rule(
        chain=args.chain, target=args.target.lower(), source=args.source,
        destination=args.destination, plain=True, text=f"-A {arptables.key_of(args)}",
    )  # fmt: skip


def table_vips(hf: HostFacts) -> frozenset[str] | None:
    """The VIPs the host's `arp shoal_arp` table covers both ways (None: table not there)."""
    if not hf.nft.known or hf.nft.value is None:
        return None
    table = hf.nft.value.table("arp", ARP_TABLE)
    if table is None:
        return None
    try:
        data: Any = json.loads(table.canonical_json or "[]")
    except ValueError:
        return frozenset()
    objects = data.get("nftables", []) if isinstance(data, dict) else data
    vips: set[str] = set()
    hooks: set[str] = set()
    chains_with_rules: set[str] = set()
    hook_of: dict[str, str] = {}
    for obj in objects if isinstance(objects, list) else []:
        if not isinstance(obj, dict):
            continue
        if isinstance(obj.get("set"), dict) and obj["set"].get("name") == "vips":
            vips |= {e for e in obj["set"].get("elem", []) if isinstance(e, str)}
        elif isinstance(obj.get("chain"), dict):
            hook_of[str(obj["chain"].get("name"))] = str(obj["chain"].get("hook"))
        elif isinstance(obj.get("rule"), dict):
            chains_with_rules.add(str(obj["rule"].get("chain")))
    hooks = {hook_of[c] for c in chains_with_rules if c in hook_of}
    return frozenset(vips) if {"input", "output"} <= hooks else frozenset()


def _args_table_vips(args: nft.NftTableArgs) -> frozenset[str]:
    """The VIPs an `arp shoal_arp` table the plan writes covers both ways."""
    if args.family != "arp" or args.name != ARP_TABLE:
        return frozenset()
    hooks = {c.hook for c in args.chains if c.rules}
    if not {"input", "output"} <= hooks:
        return frozenset()
    return frozenset(e for s in args.sets if s.name == "vips" for e in s.elements)


def _held(hf: HostFacts, vips: frozenset[str]) -> set[tuple[str, str, int]]:
    """(address, interface, prefix) of every guarded VIP on an interface other than lo."""
    if not hf.interfaces.known or hf.interfaces.value is None:
        return set()
    return {
        (a.address, iface.name, a.prefix)
        for iface in hf.interfaces.value
        if iface.name != "lo"
        for a in iface.addresses
        if a.family in ("inet", "inet6") and a.address in vips
    }


# --- the state after a plan -----------------------------------------------------------------------


@dataclass
class _State:
    held: set[tuple[str, str, int]]
    rules: list[_Rule] | str
    table: frozenset[str]


def _now(hf: HostFacts, vips: frozenset[str]) -> _State:
    return _State(_held(hf, vips), _fact_rules(hf), table_vips(hf) or frozenset())


def _after(hf: HostFacts, vips: frozenset[str], steps: Sequence[Step],
           lows: Mapping[str, LowState]) -> _State:  # fmt: skip
    state = _now(hf, vips)
    for step in steps:
        low = lows.get(step.state_id)
        if low is None:
            continue
        if step.function == addr.FUNCTION:
            a = addr.PRESENT.parse(low)
            if a.interface != "lo" and a.address in vips:
                state.held.add((a.address, a.interface, a.prefix))
        elif step.function == "addr.absent" and (k := addr.from_key(addr.ABSENT.parse(low).key)):
            state.held.discard((k.address, k.interface, k.prefix))
        elif step.function == arptables.FUNCTION and isinstance(state.rules, list):
            state.rules.append(_args_rule(arptables.PRESENT.parse(low)))
        elif step.function == "arptables.rule_absent" and isinstance(state.rules, list):
            r = arptables.from_key(arptables.ABSENT.parse(low).key)
            if r is not None:
                gone = _args_rule(r)
                for _ in step.commands:
                    for i, have in enumerate(state.rules):
                        if have.plain and (have.chain, have.target, have.source,
                                           have.destination) == (gone.chain, gone.target,
                                                                 gone.source, gone.destination):
                            del state.rules[i]
                            break
        elif step.function == nft.FUNCTION:
            table = nft.PRESENT.parse(low)
            if table.family == "arp" and table.name == ARP_TABLE:
                state.table = _args_table_vips(table)
        elif step.function == "nft.table_absent" and nft.ABSENT.parse(low).key == _ARP_TABLE_KEY:
            state.table = frozenset()
    return state


# --- the checks -----------------------------------------------------------------------------------


def _covers_input(rules: Iterable[_Rule], vip: str) -> bool:
    return any(r.plain and r.chain == "INPUT" and r.target == "drop" and r.destination == vip
               and r.source is None for r in rules)  # fmt: skip


def _covers_output(rules: Iterable[_Rule], vip: str) -> bool:
    return any(r.plain and r.chain == "OUTPUT" and r.target == "mangle" and r.source == vip
               for r in rules)  # fmt: skip


def _seed_form(rules: Iterable[_Rule], vip: str) -> list[_Rule]:
    return [r for r in rules if r.chain == "OUTPUT" and r.target == "mangle"
            and r.destination == vip and r.source is None]  # fmt: skip


def seed_form_rules(hf: HostFacts, vip: str) -> list[str]:
    """The host's seed-form OUTPUT mangle rules for `vip` (`-A OUTPUT -d VIP -j mangle`), as
    text; none when its rules are unknown."""
    rules = _fact_rules(hf)
    return [r.text for r in _seed_form(rules, vip)] if isinstance(rules, list) else []


OLD_CHAINS = ("IN", "OUT")


def old_chain_rules(hf: HostFacts, vip: str) -> list[str]:
    """Rules naming `vip` in arptables_jf's chains IN/OUT (the seed HOWTO's): on today's
    arptables those are user chains nothing jumps to, so the rules never see a packet."""
    rules = _fact_rules(hf)
    if not isinstance(rules, list):
        return []
    return [r.text for r in rules if r.chain in OLD_CHAINS and vip in (r.source, r.destination)]


def _problems(host: str, state: _State) -> dict[tuple[str, str], str]:
    """(vip, interface) -> what leaves the host able to answer or announce ARP for the VIP."""
    out: dict[tuple[str, str], str] = {}
    for vip, iface, prefix in sorted(state.held):
        where = f"{host} holds {vip}/{prefix} on {iface}"
        if family_of(vip) == 6:
            out[(vip, iface)] = (
                f"{where}: it answers Neighbour Solicitations for it there (no ARP rule or "
                "table sees Neighbour Discovery), for a VIP that only the active director may "
                "answer for; a real server holds an IPv6 VIP on lo"
            )
            continue
        if vip in state.table:
            continue
        if isinstance(state.rules, str):
            out[(vip, iface)] = f"{where}, and whether ARP for it is suppressed is unknown: " \
                                f"{state.rules}"  # fmt: skip
            continue
        missing = []
        if not _covers_input(state.rules, vip):
            missing.append(f"no INPUT rule drops ARP requests for it (arptables -A INPUT -d "
                           f"{vip} -j DROP)")  # fmt: skip
        if not _covers_output(state.rules, vip):
            seed = _seed_form(state.rules, vip)
            also = ""
            if seed:
                also = (f"; the rule `{seed[0].text}` is the seed HOWTO's -d form, which does "
                        "not rewrite ARP the host sends with the VIP as sender")
            missing.append(f"no OUTPUT rule rewrites ARP sent from it (arptables -A OUTPUT -s "
                           f"{vip} -j mangle --mangle-ip-s <its address>){also}")  # fmt: skip
        if missing:
            out[(vip, iface)] = f"{where}, but {' and '.join(missing)}: it answers ARP for a " \
                                "VIP that only the active director may answer for"  # fmt: skip
    return out


def _with_sysctl_hint(
    hf: HostFacts, found: dict[tuple[str, str], str]
) -> dict[tuple[str, str], str]:
    """Each problem on an interface whose arp_ignore is 1 or more says why that is no help:
    the seed-era mistake of a VIP on the interface under the sysctl method."""
    sysctls = hf.sysctls.value if hf.sysctls.known and hf.sysctls.value is not None else {}
    out = {}
    for (vip, iface), msg in found.items():
        values = [sysctls.get(f"net.ipv4.conf.{scope}.arp_ignore", "0") for scope in ("all", iface)]
        if any(v.strip() not in ("0", "") for v in values):
            msg += (" (a VIP on the interface under the sysctl method: arp_ignore=1 does not hide "
                    "an address on the interface that receives the request; it belongs on lo)")
        out[(vip, iface)] = msg
    return out


def check_host(
    host: str,
    hf: HostFacts,
    desired: Desired,
    steps: Sequence[Step],
    lows: Mapping[str, LowState],
) -> Findings:
    """The invariants on the host's facts now and after `steps`: violations refuse the host."""
    vips = guarded_vips(desired, host)
    if not vips:
        return Findings()
    touches = any(s.function.startswith(("addr.", "arptables.", "nft.table")) for s in steps)
    now = _now(hf, vips)
    if not now.held and not touches:
        return Findings()
    after = _after(hf, vips, steps, lows) if touches else now
    before = _with_sysctl_hint(hf, _problems(host, now))
    later = _with_sysctl_hint(hf, _problems(host, after))
    violations = [f"{msg} (after this plan too)" if k in before else f"after this plan: {msg}"
                  for k, msg in later.items()]  # fmt: skip
    notes = [f"fixed by this plan: {msg}" for k, msg in before.items() if k not in later]
    rules = _fact_rules(hf)
    old_chains = sorted({r.text for r in rules if r.chain in OLD_CHAINS
                         and (r.source in vips or r.destination in vips)}
                        if isinstance(rules, list) else ())  # fmt: skip
    notes += [f"{host} has the rule `{t}` in arptables_jf's chain names (the seed HOWTO's IN/OUT): "
              "on today's arptables nothing jumps to those chains, so it silences nothing; it "
              "is not shoal's, so it stays" for t in old_chains]  # fmt: skip
    if isinstance(after.rules, list):
        vip_rules = sorted({r.text for r in after.rules if r.chain == "OUTPUT"
                            and r.target == "mangle" and r.source is None
                            and r.destination in vips})  # fmt: skip
        notes += [f"{host} keeps the rule `{t}`: the seed HOWTO's -d form of the OUTPUT mangle "
                  "rule is ineffective (it does not rewrite ARP sent with the VIP as sender); "
                  "it is not shoal's, so it stays (set adopt = true to let shoal remove it)"
                  for t in vip_rules]  # fmt: skip
    return Findings(violations=tuple(violations), notes=tuple(notes))


# --- removals that must wait ----------------------------------------------------------------------


def suppressed_vips(low: LowState, hf: HostFacts) -> frozenset[str]:
    """The VIPs whose ARP suppression a removal low state takes away."""
    if low.function == "arptables.rule_absent":
        r = arptables.from_key(arptables.ABSENT.parse(low).key)
        if r is None:
            return frozenset()
        if r.chain == "INPUT" and r.target == "DROP" and r.destination:
            return frozenset({r.destination})
        if r.chain == "OUTPUT" and r.target == "mangle" and r.source:
            return frozenset({r.source})
    if low.function == "nft.table_absent" and nft.ABSENT.parse(low).key == _ARP_TABLE_KEY:
        return table_vips(hf) or frozenset()
    return frozenset()


def kept_suppression(low: LowState, hf: HostFacts, lows: Sequence[LowState]) -> str | None:
    """Why the ARP suppression `low` would remove must stay (a VIP stays on an interface
    other than lo and nothing the plan puts in place covers it), or None."""
    vips = suppressed_vips(low, hf)
    if not vips:
        return None
    held = _held(hf, vips)
    for other in lows:
        if other.function == "addr.absent" and (k := addr.from_key(addr.ABSENT.parse(other).key)):
            held.discard((k.address, k.interface, k.prefix))
        elif other.function == addr.FUNCTION:
            a = addr.PRESENT.parse(other)
            if a.interface != "lo" and a.address in vips:
                held.add((a.address, a.interface, a.prefix))
    replacement = [_args_rule(arptables.PRESENT.parse(o))
                   for o in lows if o.function == arptables.FUNCTION]  # fmt: skip
    table: frozenset[str] = frozenset()
    for o in lows:
        if o.function == nft.FUNCTION:
            table |= _args_table_vips(nft.PRESENT.parse(o))
    for vip, iface, prefix in sorted(held):
        if vip in table or (_covers_input(replacement, vip) and _covers_output(replacement, vip)):
            continue
        return (f"keeping this ARP suppression: {vip}/{prefix} stays on {iface} (not removed by "
                "this plan: not shoal's, and adopt is off), and without the suppression the host "
                "would answer ARP for the VIP")  # fmt: skip
    return None


def adopted_removals(desired: Desired, host: str, hf: HostFacts,
                     wanted: Iterable[LowState]) -> dict[str, set[str]]:  # fmt: skip
    """function -> keys of what an adopting host gives up although shoal did not make it:
    a guarded VIP on an interface other than lo that no state wants there, and seed-form
    OUTPUT mangle rules for a guarded VIP."""
    if not desired.adopts(host):
        return {}
    vips = guarded_vips(desired, host)
    want = {(str(w.args.get("address")), str(w.args.get("interface")))
            for w in wanted if w.function == "addr.present"}  # fmt: skip
    out: dict[str, set[str]] = {}
    for vip, iface, prefix in _held(hf, vips):
        if (vip, iface) not in want:
            out.setdefault("addr.present", set()).add(f"{vip}/{prefix} dev {iface}")
    rules = _fact_rules(hf)
    if isinstance(rules, list):
        for vip in vips:
            for r in _seed_form(rules, vip):
                if r.plain and r.mangle is not None:
                    seed = arptables.ArpRuleArgs(chain="OUTPUT", target="mangle", destination=vip,
                                                 mangle_ip_s=r.mangle)  # fmt: skip
                    out.setdefault("arptables.rule_present", set()).add(arptables.key_of(seed))
    return out
