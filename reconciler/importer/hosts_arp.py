"""Which ARP method a live real server uses, read from its facts, and the known-bad patterns.

A real server serves its VIPs one of four ways (compile.py's methods): the VIP on `lo` with
`arp_ignore`/`arp_announce` (sysctl), the VIP on its interface behind arptables rules
(arptables) or an nft `arp` table (nft-arp), or no VIP and an iptables nat REDIRECT per
VIP/port/protocol (redirect). A rule counts only in the exact form shoal's own state compares
(`states.arptables.matches`, `states.iptables.spec`), so what is read here is what the first plan
finds in sync.

The seed HOWTO's mistakes are recognised here and named (`Finding`): its `-A OUTPUT -d VIP`
mangle rule (rewrites nothing the host sends as the VIP), arptables_jf's chain names IN/OUT
(user chains nothing jumps to), a VIP on the client-facing interface under the sysctl method
(`arp_ignore=1` does not hide it), and nothing that brings the setup back after a reboot.

A fact the reading needs that could not be read fails the import for that host, naming the fact:
a guess would write a repository whose first plan removes or re-adds what is really there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reconciler.desired.endpoint import service_endpoint
from reconciler.desired.models import ArpMethod, Host
from reconciler.facts.hostfacts import ArpRule, Fact, FileInfo, HostFacts, IptablesRule
from reconciler.importer.sites import Finding
from reconciler.plan.invariants import old_chain_rules, seed_form_rules, table_vips
from states import arptables, iptables
from states.common import tool_missing
from states.sysctl import interface_key, lookup

# Where a hand-made setup is usually brought back at boot (the seed says rc.local, `service
# iptables save`; Debian keeps netfilter-persistent's rules and sysctl.conf there).
BOOT_FILES: tuple[str, ...] = (
    "/etc/rc.local",
    "/etc/sysctl.conf",
    "/etc/iptables/rules.v4",
    "/etc/network/interfaces",
    "/etc/nftables.conf",
    "/etc/ipvsadm.rules",
)
# Where a host shoal once managed restores its setup (gathered from every host anyway).
SHOAL_RESTORE = "/usr/local/sbin/shoal-restore"


class HostFactUnknown(Exception):
    """A fact the import needs could not be read on a host."""

    def __init__(self, host: str, fact: str, reason: str) -> None:
        self.host = host
        self.fact = fact
        self.reason = reason
        super().__init__(f"{host}: {fact} unknown ({reason}): nothing can be imported from it")


@dataclass(frozen=True, slots=True)
class Endpoint:
    vip: str
    port: int
    protocol: str


@dataclass(frozen=True, slots=True)
class ArpReading:
    """A real server's method, or why none fits (`problem`), and the patterns found."""

    host: str
    method: ArpMethod | None
    findings: tuple[Finding, ...] = ()
    problem: str | None = None


def need(hf: HostFacts, name: str, tool: str | None = None) -> object:
    """The value of fact `name`, or HostFactUnknown; a tool surely not installed reads None."""
    fact: Fact[object] = getattr(hf, name)
    if fact.known and fact.value is not None:
        return fact.value
    if tool is not None and tool_missing(hf, tool):
        return None
    raise HostFactUnknown(hf.host, name, fact.unknown_reason or "no value")


def _effective(sysctls: Mapping[str, str], interface: str, name: str) -> int:
    """The value the kernel uses for `name` on `interface`: the larger of all and the device."""
    values = [lookup(dict(sysctls), interface_key(scope, name)) for scope in ("all", interface)]
    return max((int(v) for v in values if v is not None and v.strip("-").isdigit()), default=0)


def _held_on(hf: HostFacts, vip: str) -> set[str]:
    interfaces = need(hf, "interfaces")
    assert isinstance(interfaces, tuple)
    return {i.name for i in interfaces for a in i.addresses if a.address == vip}


def _arp_rules(hf: HostFacts) -> tuple[ArpRule, ...]:
    value = need(hf, "arptables", "arptables")
    return () if value is None else tuple(getattr(value, "rules", ()))


def _nat_rules(hf: HostFacts) -> tuple[IptablesRule, ...]:
    value = need(hf, "iptables_nat", "iptables")
    return () if value is None else tuple(getattr(value, "rules", ()))


def _redirects(rules: Sequence[IptablesRule], ep: Endpoint) -> bool:
    if ep.protocol not in ("tcp", "udp"):
        return False
    want = iptables.spec(iptables.RedirectArgs(destination=ep.vip, protocol=ep.protocol,
                                               dport=ep.port))  # fmt: skip
    return any(r.chain == "PREROUTING" and tuple(r.spec) == want for r in rules)


def _rule(chain: str, target: str, *, source: str | None = None, destination: str | None = None,
          mangle: str | None = None) -> arptables.ArpRuleArgs:  # fmt: skip
    return arptables.ArpRuleArgs(chain=chain, target=target, source=source,
                                 destination=destination, mangle_ip_s=mangle)  # fmt: skip


def _has(rules: Sequence[ArpRule], args: arptables.ArpRuleArgs) -> bool:
    return any(arptables.matches(r, args) for r in rules)


def _arptables_findings(host: str, hf: HostFacts, rules: Sequence[ArpRule], vip: str,
                        rip: str) -> list[Finding]:  # fmt: skip
    out = []
    if not _has(rules, _rule("OUTPUT", "mangle", source=vip, mangle=rip)):
        for text in seed_form_rules(hf, vip):
            out.append(Finding(host, "the seed HOWTO's OUTPUT -d mangle rule", (
                f"`{text}` matches ARP sent *to* {vip}, so ARP the host sends with {vip} "
                f"as sender leaves unmangled and announces the VIP; the first plan adds "
                f"`-A OUTPUT -s {vip} -j mangle --mangle-ip-s {rip}` and removes it"
            ), adopt=True))  # fmt: skip
    old = old_chain_rules(hf, vip)
    if old:
        shown = "; ".join(f"`{t}`" for t in old)
        out.append(Finding(host, "arptables_jf's chain names IN/OUT", (
            f"{shown}: on today's arptables IN and OUT are user chains nothing jumps to, so these "
            "rules never see a packet; the first plan puts the rules in INPUT and OUTPUT (the "
            "old chains stay: they are not shoal's)"
        )))  # fmt: skip
    return out


def boot_finding(host: str, hf: HostFacts, vips: Sequence[str],
                 what: str = "the VIP or its ARP suppression") -> Finding | None:  # fmt: skip
    """Nothing on the host names its VIPs in a boot file: the setup is gone after a reboot."""
    files = hf.files.value if hf.files.known and hf.files.value is not None else {}
    seen: list[FileInfo] = [files[p] for p in (*BOOT_FILES, SHOAL_RESTORE)
                            if p in files and files[p].exists]  # fmt: skip
    if any(f.content is None for f in seen):
        return None  # a boot file too large or unreadable to look into: cannot tell
    if any(v in (f.content or "") for f in seen for v in vips):
        return None
    looked = ", ".join(BOOT_FILES)
    return Finding(host, "missing persistence across reboot", (
        f"no boot file names {', '.join(vips)} ({looked}): after a reboot {what} are gone; "
        "the first plan writes shoal's boot form (/usr/local/sbin/shoal-restore, "
        "shoal-restore.service)"
    ))  # fmt: skip


def read_arp_method(
    name: str, host: Host, hf: HostFacts, endpoints: Sequence[Endpoint]
) -> ArpReading:
    """The ARP method real server `name` uses for every endpoint it serves (HostFactUnknown if
    a fact it needs could not be read)."""
    rules = _arp_rules(hf)
    nat = _nat_rules(hf)
    sysctls = need(hf, "sysctls")
    assert isinstance(sysctls, dict)
    need(hf, "nft", "nft")
    table = table_vips(hf) or frozenset()
    ignore = _effective(sysctls, host.interface, "arp_ignore")
    announce = _effective(sysctls, host.interface, "arp_announce")
    methods: dict[str, ArpMethod] = {}
    findings: list[Finding] = []
    vips = sorted({e.vip for e in endpoints})
    for vip in vips:
        held = _held_on(hf, vip)
        outside = sorted(held - {"lo"})
        if not held:
            missing = [e for e in endpoints if e.vip == vip and not _redirects(nat, e)]
            if missing:
                e = missing[0]
                return ArpReading(name, None, problem=(
                    f"{name} serves {service_endpoint(vip, e.port, e.protocol)} but neither holds "
                    f"{vip} nor "
                    "redirects it (iptables -t nat -A PREROUTING -d VIP -p PROTO --dport PORT "
                    "-j REDIRECT): it cannot accept what the director sends it"
                ))  # fmt: skip
            methods[vip] = "redirect"
        elif not outside:
            methods[vip] = "sysctl"
            if ignore < 1 or announce < 2:
                findings.append(Finding(name, "VIP on lo without the ARP sysctls", (
                    f"{vip} is on lo but arp_ignore={ignore}, arp_announce={announce}: the host "
                    "answers ARP for it on every interface; the first plan sets "
                    "arp_ignore=1 and arp_announce=2"
                )))  # fmt: skip
        elif vip in table:
            methods[vip] = "nft-arp"
        elif _has(rules, _rule("INPUT", "DROP", destination=vip)) or old_chain_rules(hf, vip):
            methods[vip] = "arptables"
            findings += _arptables_findings(name, hf, rules, vip, host.address)
        elif ignore >= 1:
            methods[vip] = "sysctl"
            findings.append(Finding(name, "a VIP on the interface under the sysctl method", (
                f"{vip} is on {', '.join(outside)}, where arp_ignore=1 does not hide it (it "
                f"answers ARP for the VIP); the first plan adds {vip}/32 on lo and removes it "
                f"from {', '.join(outside)}"
            ), adopt=True))  # fmt: skip
        else:
            return ArpReading(name, None, problem=(
                f"{name} holds {vip} on {', '.join(outside)} with no ARP suppression at all "
                "(no arptables INPUT rule, no nft arp table, arp_ignore=0): it answers ARP for "
                "the VIP; set up one method on it by hand first, or leave it out"
            ))  # fmt: skip
    found = sorted(set(methods.values()))
    if len(found) > 1:
        each = ", ".join(f"{v}: {m}" for v, m in sorted(methods.items()))
        return ArpReading(name, None, problem=(
            f"{name} keeps its VIPs quiet in different ways ({each}); shoal uses one ARP method "
            "per real server"
        ))  # fmt: skip
    boot = boot_finding(name, hf, vips)
    if boot is not None:
        findings.append(boot)
    return ArpReading(name, methods[vips[0]] if vips else None, tuple(findings))
