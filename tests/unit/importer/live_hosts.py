"""Facts of hand-built clusters, as the facts script would read them, for the --from-hosts tests.

The hosts are fixtures/config-repo's (lvs1, lvs2, web1..web3, client1); each is a fresh host
(tests/statecases.py) with what an operator set up by hand added: IPVS tables parsed from
`ipvsadm -Sn` text, addresses, arptables and nat rules, sysctls, keepalived running.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from reconciler.facts.hostfacts import (
    ArpRule,
    Fact,
    FileInfo,
    HostFacts,
    IptablesRule,
    KeepalivedInfo,
    NftTable,
)
from reconciler.facts.parsers.arptables import parse_arp_rule
from reconciler.facts.parsers.ipvsadm import ipvs_table
from tests.statecases import (
    HOSTS,
    add_addresses,
    add_arp_rules,
    add_nat_rules,
    add_nft_tables,
    fresh_facts,
    set_sysctls,
)

VIP1 = "10.77.0.100"  # method 1 (arptables, the seed's OUTPUT rule)
VIP2 = "10.77.0.101"  # method 2 (REDIRECT)
RIP = {h: a for h, a in HOSTS.items()}

IPVS_SAVE = f"""\
-A -t {VIP1}:80 -s wlc
-a -t {VIP1}:80 -r {RIP["web1"]}:80 -g -w 1
-a -t {VIP1}:80 -r {RIP["web3"]}:80 -g -w 2
-A -t {VIP2}:80 -s rr -p 600
-a -t {VIP2}:80 -r {RIP["web2"]}:80 -g -w 1
"""


def director(host: str, save: str = IPVS_SAVE, *, holds: tuple[str, ...] = (),
             keepalived: bool = False) -> HostFacts:  # fmt: skip
    hf = fresh_facts(host)
    hf = hf.model_copy(update={"ipvs": Fact.of(ipvs_table(save, None).model_copy(
        update={"available": True, "loaded": True}))})  # fmt: skip
    hf = add_addresses(hf, [("eth0", vip, 32) for vip in holds])
    if keepalived:
        hf = hf.model_copy(update={"keepalived": Fact.of(
            KeepalivedInfo(installed=True, version="2.2.7", running=True))})  # fmt: skip
    return hf


def seed_rule(text: str) -> ArpRule:
    """One arptables rule as `arptables -L -n` lists it, parsed the facts' way."""
    return parse_arp_rule(text)


def method1(host: str, vip: str = VIP1, *, chains: tuple[str, str] = ("INPUT", "OUTPUT"),
            output: str = "-d") -> HostFacts:  # fmt: skip
    """The seed's method 1 with the chains given: DROP for the VIP, the OUTPUT mangle rule in
    the `output` form, the VIP on eth0."""
    rip = RIP[host]
    rules = [seed_rule(f"-A {chains[0]} -d {vip} -j DROP"),
             seed_rule(f"-A {chains[1]} {output} {vip} -j mangle --mangle-ip-s {rip}")]  # fmt: skip
    # arptables-nft keeps its rules in `table arp filter`, which the nft facts show too.
    hf = add_nft_tables(add_arp_rules(fresh_facts(host), rules),
                        [NftTable(family="arp", name="filter")])  # fmt: skip
    return add_addresses(hf, [("eth0", vip, 32)])


def method2(host: str, vip: str = VIP2, port: int = 80, protocol: str = "tcp") -> HostFacts:
    """The seed's method 2: a nat REDIRECT, as iptables-save prints it back."""
    spec = ("-d", f"{vip}/32", "-p", protocol, "-m", protocol, "--dport", str(port),
            "-j", "REDIRECT")  # fmt: skip
    rule = IptablesRule(chain="PREROUTING", spec=spec, destination=f"{vip}/32",
                        protocol=protocol, dport=port, target="REDIRECT")  # fmt: skip
    return add_nft_tables(add_nat_rules(fresh_facts(host), [rule]),
                          [NftTable(family="ip", name="nat")])  # fmt: skip


def sysctl_method(host: str, vips: tuple[str, ...], dev: str = "lo") -> HostFacts:
    values = {f"net.ipv4.conf.{scope}.{key}": value
              for scope in ("all", "eth0")
              for key, value in (("arp_ignore", "1"), ("arp_announce", "2"))}  # fmt: skip
    hf = set_sysctls(fresh_facts(host), values)
    return add_addresses(hf, [(dev, vip, 32) for vip in vips])


def seed_site(**override: HostFacts) -> dict[str, HostFacts]:
    """lvs1 (primary, holds both VIPs) and lvs2 with the same IPVS table; web1 and web3 on
    method 1 (VIP1), web2 on method 2 (VIP2); client1 untouched."""
    facts: dict[str, HostFacts] = {
        "lvs1": director("lvs1", holds=(VIP1, VIP2)),
        "lvs2": director("lvs2"),
        "web1": method1("web1"),
        "web2": method2("web2"),
        "web3": method1("web3"),
        "client1": fresh_facts("client1"),
    }
    facts.update(override)
    return facts


def with_boot_file(hf: HostFacts, files: Mapping[str, str]) -> HostFacts:
    """A host whose boot files (path -> content) the import gathered."""
    current = dict(hf.files.value or {})
    for path, content in files.items():
        current[path] = FileInfo(path=path, exists=True, kind="regular file", mode="0644",
                                 sha256=hashlib.sha256(content.encode()).hexdigest(),
                                 content=content)  # fmt: skip
    return hf.model_copy(update={"files": Fact.of(current)})
