"""Desired states and host facts built from the typed models, for the planner's tests.

`cluster_desired` builds a small repository (two directors, three real servers, two VIPs);
`fresh_facts` is a host as a new Debian install shows it; `configured_facts` is a real server
after the corrected commands of the research notes (4.4-4.7) were run by hand, and
`after_files` adds what a plan's file steps write, so "apply, then plan again" can be checked
without a host. The netns test (tests/lab/test_states_netns.py) checks the same on real kernels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reconciler.desired.models import (
    Cluster,
    ClusterHeader,
    Desired,
    ExtraState,
    Host,
    Inventory,
    RealServer,
    Service,
    Settings,
)
from reconciler.facts.hostfacts import (
    Address,
    ArpRule,
    ArptablesRules,
    Fact,
    FileInfo,
    HostFacts,
    Interface,
    IptablesNat,
    IptablesRule,
    IpvsTable,
    KeepalivedInfo,
    Ledger,
    Login,
    NftRuleset,
    NftTable,
)
from reconciler.plan.steps import Plan
from states.nft import ARP_TABLE, NftTableArgs, arp_table_args, digest

HOSTS = {
    "lvs1": "10.77.0.11",
    "lvs2": "10.77.0.12",
    "web1": "10.77.0.21",
    "web2": "10.77.0.22",
    "web3": "10.77.0.23",
    "client1": "10.77.0.31",
}
REAL_SERVERS = ("web1", "web2", "web3")
VIP_HTTP = "10.77.0.100"
VIP_DNS = "10.77.0.101"
TOOLS = ("ip", "sysctl", "arptables", "arptables-save", "iptables", "iptables-save", "nft",
         "ipvsadm", "keepalived", "systemctl")  # fmt: skip


def cluster_desired(
    method: str = "sysctl",
    *,
    director: str = "keepalived",
    real_servers: Sequence[str] = REAL_SERVERS,
    extras: Sequence[ExtraState] = (),
    revision: str = "rev1",
) -> Desired:
    """web: http on VIP .100 (every real server), dns/udp on VIP .101 (the first one)."""
    services = []
    if real_servers:
        services = [
            Service(name="http", vip=VIP_HTTP, port=80, protocol="tcp",
                    real_servers=tuple(RealServer(host=h, weight=1) for h in real_servers)),
            Service(name="dns", vip=VIP_DNS, port=53, protocol="udp",
                    real_servers=(RealServer(host=real_servers[0], weight=1),)),
        ]  # fmt: skip
    cluster = Cluster(
        cluster=ClusterHeader(name="web", directors=("lvs1", "lvs2"), director=director,  # type: ignore[arg-type]
                              arp_method=method),  # type: ignore[arg-type]
        services=tuple(services),
        states=tuple(extras),
    )  # fmt: skip
    return Desired(
        settings=Settings(),
        inventory=Inventory(
            hosts={n: Host(name=n, address=a, interface="eth0") for n, a in HOSTS.items()}
        ),
        clusters={"web": cluster},
        known_hosts="",
        revision=revision,
    )


def _mac(host: str) -> str:
    digest = hashlib.sha256(host.encode()).hexdigest()
    return "02:" + ":".join(digest[i : i + 2] for i in range(0, 10, 2))


def fresh_facts(host: str, address: str | None = None, *, interface: str = "eth0") -> HostFacts:
    """A reachable host with nothing of shoal's: default sysctls, no rules, empty ledger."""
    address = address or HOSTS[host]
    interfaces = (
        Interface(name="lo", mac="00:00:00:00:00:00", up=True,
                  addresses=(Address(address="127.0.0.1", prefix=8, scope="host"),)),
        Interface(name=interface, mac=_mac(host), up=True,
                  addresses=(Address(address=address, prefix=24, scope="global"),)),
    )  # fmt: skip
    sysctls = {"net.ipv4.ip_forward": "0"}
    for scope in ("all", "default", "lo", interface):
        for key in ("arp_ignore", "arp_announce", "rp_filter"):
            sysctls[f"net.ipv4.conf.{scope}.{key}"] = "0"
    return HostFacts(
        host=host,
        hostname=Fact.of(host),
        interfaces=Fact.of(interfaces),
        sysctls=Fact.of(sysctls),
        arptables=Fact.of(ArptablesRules(backend="nft", chains=("INPUT", "OUTPUT"))),
        iptables_nat=Fact.of(IptablesNat(backend="nft", chains=("PREROUTING",))),
        nft=Fact.of(NftRuleset()),
        ipvs=Fact.of(IpvsTable(available=False)),
        keepalived=Fact.of(KeepalivedInfo(installed=True, version="2.2.7")),
        files=Fact.of({}),
        tools=Fact.of(dict.fromkeys(TOOLS, True)),
        services=Fact.of({}),
        services_enabled=Fact.of({}),
        ledger=Fact.of(Ledger()),
        login=Fact.of(Login(uid=0, user="root")),
    )


def all_fresh(hosts: Iterable[str] = HOSTS) -> dict[str, HostFacts]:
    return {h: fresh_facts(h) for h in hosts}


def with_files(facts: HostFacts, files: Mapping[str, tuple[str, str] | None]) -> HostFacts:
    """`files`: path -> (content, mode), or None for a path gathered and absent."""
    current = dict(facts.files.value or {})
    for path, spec in files.items():
        if spec is None:
            current[path] = FileInfo(path=path, exists=False)
        else:
            content, mode = spec
            digest = hashlib.sha256(content.encode()).hexdigest()
            current[path] = FileInfo(
                path=path, exists=True, mode=mode, kind="regular file", sha256=digest
            )
    return facts.model_copy(update={"files": Fact.of(current)})


def gathered(facts: HostFacts, paths: Iterable[str]) -> HostFacts:
    """The files facts as the facts script reports `paths` that do not exist yet."""
    known = facts.files.value or {}
    return with_files(facts, {p: None for p in paths if p not in known})


def add_addresses(facts: HostFacts, items: Iterable[tuple[str, str, int]]) -> HostFacts:
    """`items`: (interface, address, prefix)."""
    ifaces = list(facts.interfaces.value or ())
    for dev, address, prefix in items:
        for i, iface in enumerate(ifaces):
            if iface.name == dev:
                added = Address(address=address, prefix=prefix)
                ifaces[i] = iface.model_copy(update={"addresses": (*iface.addresses, added)})
    return facts.model_copy(update={"interfaces": Fact.of(tuple(ifaces))})


def set_sysctls(facts: HostFacts, values: Mapping[str, str]) -> HostFacts:
    return facts.model_copy(update={"sysctls": Fact.of({**(facts.sysctls.value or {}), **values})})


def add_arp_rules(facts: HostFacts, rules: Iterable[ArpRule]) -> HostFacts:
    cur = facts.arptables.value or ArptablesRules()
    new = cur.model_copy(update={"rules": (*cur.rules, *rules)})
    return facts.model_copy(update={"arptables": Fact.of(new)})


def add_nat_rules(facts: HostFacts, rules: Iterable[IptablesRule]) -> HostFacts:
    cur = facts.iptables_nat.value or IptablesNat()
    new = cur.model_copy(update={"rules": (*cur.rules, *rules)})
    return facts.model_copy(update={"iptables_nat": Fact.of(new)})


def add_nft_tables(facts: HostFacts, tables: Iterable[NftTable]) -> HostFacts:
    cur = facts.nft.value or NftRuleset()
    return facts.model_copy(update={"nft": Fact.of(NftRuleset(tables=(*cur.tables, *tables)))})


def arp_input_drop(vip: str) -> ArpRule:
    """As arptables-save (nft) prints `-A INPUT -j DROP -d VIP`, parsed."""
    return ArpRule(chain="INPUT", target="DROP", destination_ip=vip,
                   raw=f"-A INPUT -j DROP -d {vip}")  # fmt: skip


def arp_output_mangle(vip: str, rip: str) -> ArpRule:
    return ArpRule(chain="OUTPUT", target="mangle", source_ip=vip, mangle_ip_s=rip,
                   raw=f"-A OUTPUT -j mangle -s {vip} --mangle-ip-s {rip}")  # fmt: skip


def redirect_rule(vip: str, proto: str, port: int) -> IptablesRule:
    spec = ("-d", f"{vip}/32", "-p", proto, "-m", proto, "--dport", str(port), "-j", "REDIRECT")
    return IptablesRule(chain="PREROUTING", spec=spec, destination=f"{vip}/32", protocol=proto,
                        dport=port, target="REDIRECT")  # fmt: skip


def nft_json(objects: list[dict[str, Any]]) -> str:
    return json.dumps({"nftables": objects}, sort_keys=True)


def shoal_arp_table_json(vips: Sequence[str], rip: str, comment: str) -> str:
    """`nft -j list table arp shoal_arp` after shoal's table was loaded (nft 1.0.6 shape)."""

    def rule(chain: str, expr: list[dict[str, Any]]) -> dict[str, Any]:
        return {"rule": {"family": "arp", "table": "shoal_arp", "chain": chain, "handle": 4,
                         "comment": comment, "expr": expr}}  # fmt: skip

    def payload(field: str) -> dict[str, Any]:
        return {"payload": {"protocol": "arp", "field": field}}

    return nft_json([
        {"table": {"family": "arp", "name": "shoal_arp", "handle": 1}},
        {"set": {"family": "arp", "name": "vips", "table": "shoal_arp", "type": "ipv4_addr",
                 "handle": 2, "comment": comment, "elem": sorted(vips)}},
        {"chain": {"family": "arp", "table": "shoal_arp", "name": "input", "handle": 1,
                   "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
        {"chain": {"family": "arp", "table": "shoal_arp", "name": "output", "handle": 2,
                   "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}},
        rule("input", [{"match": {"op": "==", "left": payload("operation"), "right": "request"}},
                       {"match": {"op": "==", "left": payload("daddr ip"), "right": "@vips"}},
                       {"drop": None}]),
        rule("output", [{"match": {"op": "==", "left": payload("saddr ip"), "right": "@vips"}},
                        {"mangle": {"key": payload("saddr ip"), "value": rip}}]),
    ])  # fmt: skip


def after_files(facts: dict[str, HostFacts], plan: Plan) -> dict[str, HostFacts]:
    """`facts` with every file the plan writes or removes, and its ledger, as written."""
    out = dict(facts)
    for host, hp in plan.hosts.items():
        if host not in out:
            continue
        f = out[host]
        files: dict[str, tuple[str, str] | None] = {}
        for step in hp.steps:
            for w in step.writes:
                files[w.path] = (w.content, w.mode)
                if w.path == "/var/lib/shoal/ledger.json":
                    written = Ledger.model_validate_json(w.content)
                    f = f.model_copy(update={"ledger": Fact.of(written)})
            for argv in step.commands:
                if argv[:2] == ("rm", "-f"):
                    files[argv[2]] = None
                if argv[:2] == ("systemctl", "enable"):
                    files[f"/etc/systemd/system/multi-user.target.wants/{argv[2]}"] = ("", "0777")
                if argv[:2] == ("systemctl", "disable"):
                    files[f"/etc/systemd/system/multi-user.target.wants/{argv[2]}"] = None
        out[host] = with_files(f, files)
    return out


def hand_configured(method: str, host: str, vips: list[str]) -> HostFacts:
    """The host after the research notes' corrected commands, run by hand."""
    f = fresh_facts(host)
    rip = HOSTS[host]
    if method == "sysctl":
        f = set_sysctls(f, {f"net.ipv4.conf.{s}.{k}": v for s in ("all", "eth0")
                            for k, v in (("arp_ignore", "1"), ("arp_announce", "2"))})  # fmt: skip
        return add_addresses(f, [("lo", v, 32) for v in vips])
    if method == "arptables":
        rules = [r for v in vips for r in (arp_input_drop(v), arp_output_mangle(v, rip))]
        return add_addresses(add_arp_rules(f, rules), [("eth0", v, 32) for v in vips])
    if method == "nft-arp":
        args = NftTableArgs.model_validate(arp_table_args(vips, rip))
        comment = f"shoal:{digest(args)}"
        table = NftTable(family="arp", name=ARP_TABLE, comment=comment,
                         canonical_json=shoal_arp_table_json(vips, rip, comment))  # fmt: skip
        return add_addresses(add_nft_tables(f, [table]), [("eth0", v, 32) for v in vips])
    services = [(VIP_HTTP, "tcp", 80)] + ([(VIP_DNS, "udp", 53)] if VIP_DNS in vips else [])
    return add_nat_rules(f, [redirect_rule(v, p, port) for v, p, port in services])
