"""Fact parsers against outputs captured from the real tools (fixtures/facts/<parser>/<case>.txt).

Each case's parse result must equal <case>.json. The expected files were written by the parser
and then read line by line against the captured text; to rewrite them after a deliberate change,
run with SHOAL_REGEN_FIXTURES=1 and review the diff. Focused tests below pin the properties that
matter to the planner, independently of the snapshots.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from reconciler.errors import FactParseError
from reconciler.facts.parse import parse_facts_output
from reconciler.facts.parsers.arptables import parse_arptables_list, parse_arptables_save
from reconciler.facts.parsers.backend import parse_xtables_version
from reconciler.facts.parsers.ip_addr import parse_ip_addr
from reconciler.facts.parsers.iptables import parse_iptables_save
from reconciler.facts.parsers.ipvsadm import ipvs_table, parse_ipvsadm_list, parse_ipvsadm_save
from reconciler.facts.parsers.keepalived import parse_keepalived_version
from reconciler.facts.parsers.nft import parse_nft_ruleset

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "facts"
REGEN = os.environ.get("SHOAL_REGEN_FIXTURES") == "1"


def _aux(case: Path, suffix: str) -> str | None:
    path = case.with_name(case.name.removesuffix(".txt") + suffix)
    return path.read_text() if path.exists() else None


def _ipvsadm_list(text: str, case: Path) -> Any:
    return [
        {"service": list(key[0]), "address": key[1], "port": key[2], "conns": list(v)}
        for key, v in parse_ipvsadm_list(text).items()
    ]


def _ipvsadm_save(text: str, case: Path) -> Any:
    services, dests = parse_ipvsadm_save(text)
    return {"services": list(services), "destinations": list(dests)}


PARSERS: dict[str, Callable[[str, Path], Any]] = {
    "arptables_save": lambda t, c: parse_arptables_save(t, stderr=_aux(c, ".stderr") or ""),
    "arptables_list": lambda t, c: parse_arptables_list(t, stderr=_aux(c, ".stderr") or ""),
    "xtables_version": lambda t, c: parse_xtables_version(t),
    "iptables_save": lambda t, c: parse_iptables_save(t, stderr=_aux(c, ".stderr") or ""),
    "ipvsadm_save": _ipvsadm_save,
    "ipvsadm_list": _ipvsadm_list,
    "ipvs_table": lambda t, c: ipvs_table(t, _aux(c, ".list.txt")),
    "ip_addr": lambda t, c: parse_ip_addr(t),
    "nft_ruleset": lambda t, c: parse_nft_ruleset(t),
    "keepalived_version": lambda t, c: parse_keepalived_version(t),
    "facts_script": lambda t, c: parse_facts_output("fixture-host", t),
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _cases() -> list[Any]:
    cases = []
    for parser in sorted(PARSERS):
        for case in sorted((FIXTURES / parser).glob("*.txt")):
            if case.name.endswith(".list.txt"):
                continue
            cases.append(pytest.param(parser, case, id=f"{parser}/{case.stem}"))
    return cases


def test_every_fixture_directory_is_a_parser_and_every_case_has_its_expectation() -> None:
    # A directory no parser claims would be skipped in silence, and so would a case without
    # its expected result (or an expected result whose case was renamed).
    assert {d.name for d in FIXTURES.iterdir() if d.is_dir()} == set(PARSERS)
    for parser in PARSERS:
        cases = {
            c.name.removesuffix(".txt")
            for c in (FIXTURES / parser).glob("*.txt")
            if not c.name.endswith(".list.txt")  # a case's auxiliary input, not a case
        }
        expected = {e.stem for e in (FIXTURES / parser).glob("*.json")}
        assert cases, f"no fixtures for {parser}"
        assert cases == expected, parser


@pytest.mark.parametrize(("parser", "case"), _cases())
def test_parser_matches_expected(parser: str, case: Path) -> None:
    got = _jsonable(PARSERS[parser](case.read_text(), case))
    expected_path = case.with_suffix(".json")
    if REGEN:
        expected_path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert expected_path.exists(), f"missing {expected_path.name}"
    assert got == json.loads(expected_path.read_text())


# --- arptables ------------------------------------------------------------------------------


def _arp(name: str) -> str:
    return (FIXTURES / "arptables_save" / name).read_text()


def test_arptables_legacy_and_nft_give_the_same_canonical_rules() -> None:
    nft = parse_arptables_save(_arp("nft_dr_rules.txt"), "nft")
    legacy = parse_arptables_save(_arp("legacy_rules.txt"), "legacy")
    nft_specs = {(r.chain, r.spec) for r in nft.rules}
    # Rules created by the same commands on both backends (the legacy file also has extras).
    for chain, spec in [
        ("INPUT", ("-d", "10.77.0.100", "-j", "DROP")),
        ("INPUT", ("-i", "eth0", "-d", "10.77.0.101", "--opcode", "1", "-j", "DROP")),
        ("OUTPUT", ("-s", "10.77.0.100", "-j", "mangle", "--mangle-ip-s", "10.77.0.21")),
    ]:
        assert (chain, spec) in nft_specs
        assert any(r.chain == chain and r.spec == spec for r in legacy.rules)
    # The legacy save script's trailing spaces and FORWARD chain do not leak into the rules.
    assert all(not r.raw.endswith(" ") for r in legacy.rules)
    assert legacy.policies["FORWARD"] == "DROP" and "FORWARD" not in nft.policies


def test_arptables_counters_prefix_is_not_part_of_the_rule() -> None:
    plain = parse_arptables_save(_arp("nft_dr_rules.txt"))
    counted = parse_arptables_save(_arp("nft_counters.txt"))
    assert plain.rules == counted.rules


def test_arptables_target_first_layout_is_understood() -> None:
    rules = parse_arptables_save(_arp("nft_dr_rules.txt")).rules
    mangle = next(r for r in rules if r.interface_out == "eth0")
    assert mangle.target == "mangle"
    assert mangle.source_ip == "10.77.0.101"
    assert mangle.mangle_ip_s == "10.77.0.21"
    assert mangle.spec[-4:] == ("-j", "mangle", "--mangle-ip-s", "10.77.0.21")


def test_arptables_legacy_tables_are_present_exactly_when_arptables_nft_warns() -> None:
    text = _arp("nft_legacy_also_present.txt")
    warned = parse_arptables_save(text, "nft", stderr=_arp("nft_legacy_also_present.stderr"))
    silent = parse_arptables_save(text, "nft")
    iptables_warned = parse_arptables_save(
        text, "nft", stderr="# Warning: iptables-legacy tables present, use iptables-legacy-save\n"
    )
    assert [warned.legacy_tables_present, silent.legacy_tables_present] == [True, False]
    # Another tool's legacy tables say nothing about the ARP tables.
    assert not iptables_warned.legacy_tables_present
    # The warning is about other tables: the rules read are the same either way.
    assert warned.rules == silent.rules and len(warned.rules) == 6


def test_arptables_names_opcodes_and_host_masks_like_the_tools() -> None:
    text = "*filter\n:INPUT ACCEPT\n-A INPUT -j DROP -d 1.2.3.4/32 --opcode Request\n"
    rule = parse_arptables_save(text)
    assert rule.rules[0].destination_ip == "1.2.3.4"
    assert rule.rules[0].opcode == "1"


def test_arptables_listing_equals_save_and_is_numeric() -> None:
    listing = parse_arptables_list(
        (FIXTURES / "arptables_list" / "nft_dr_rules.txt").read_text(), "nft"
    )
    saved = parse_arptables_save(_arp("nft_mangle_address_printed_as_name.txt"), "nft")
    assert listing.policies == saved.policies
    # Same rules, except that arptables-nft-save printed 127.0.0.1 as "localhost".
    assert [r.mangle_ip_s for r in saved.rules if r.mangle_ip_s] == ["10.77.0.21", "localhost"]
    assert [r.mangle_ip_s for r in listing.rules if r.mangle_ip_s] == ["10.77.0.21", "127.0.0.1"]
    assert [r.spec for r in listing.rules][:2] == [r.spec for r in saved.rules][:2]


def test_arptables_legacy_listing_trailing_spaces_and_forward_chain() -> None:
    legacy = parse_arptables_list(
        (FIXTURES / "arptables_list" / "legacy_rules.txt").read_text(), "legacy"
    )
    assert legacy.chains == ("INPUT", "OUTPUT", "FORWARD", "shoal-extra")
    assert legacy.policies["shoal-extra"] == "-"
    assert [r.spec for r in legacy.rules if r.chain == "INPUT"] == [
        ("-d", "10.77.0.100", "-j", "DROP")
    ]


def test_arptables_garbage_is_a_parse_error() -> None:
    with pytest.raises(FactParseError):
        parse_arptables_save("*filter\n:INPUT ACCEPT\nsomething else\n")


# --- xtables backends, iptables --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "backend"),
    [
        ("arptables v1.8.9 (nf_tables)", "nft"),
        ("arptables v0.0.5", "legacy"),
        ("iptables v1.8.9 (legacy)", "legacy"),
        ("iptables v1.8.9 (nf_tables)", "nft"),
    ],
)
def test_backend_from_version_line(line: str, backend: str) -> None:
    assert parse_xtables_version(line + "\n") == backend


def test_backend_unknown_flavour_is_an_error() -> None:
    with pytest.raises(FactParseError):
        parse_xtables_version("iptables v9.9 (ebpf)")


def test_iptables_rules_are_canonical_and_comment_kept() -> None:
    text = (FIXTURES / "iptables_save" / "nft_redirect_rules.txt").read_text()
    nat = parse_iptables_save(text, "nft")
    https = next(r for r in nat.rules if r.dport == 443)
    assert https.destination == "10.77.0.101/32"
    assert https.comment == "shoal: svc https"
    assert https.to_ports == "8443"
    assert https.spec[:6] == ("-d", "10.77.0.101/32", "-p", "tcp", "-m", "tcp")
    assert nat.policies["SHOAL-DR"] == "-"


def test_iptables_legacy_without_nat_table_is_known_empty() -> None:
    assert parse_iptables_save("", "legacy").rules == ()


# --- ipvsadm ---------------------------------------------------------------------------------


def test_ipvsadm_save_all_option_forms() -> None:
    text = (FIXTURES / "ipvsadm_save" / "research_all_forms.txt").read_text()
    services, dests = parse_ipvsadm_save(text)
    by_key = {s.key: s for s in services}
    assert by_key[("tcp", "192.168.76.24", 80, 0)].persistence == 300
    fwm = by_key[("fwmark", "", 0, 7)]
    assert (fwm.netmask, fwm.persistence) == ("255.255.255.0", 300)
    v6 = by_key[("tcp", "2001:db8::24", 443, 0)]
    assert (v6.family, v6.flags, v6.netmask) == ("inet6", ("mh-port",), "64")
    assert by_key[("sctp", "192.168.76.24", 3868, 0)].flags == ("sh-fallback", "sh-port")
    tunnel = next(d for d in dests if d.forward == "tunnel")
    assert tunnel.tunnel_options == ("--tun-type", "gue", "--tun-port", "6080", "--tun-nocsum")
    assert [d.weight for d in dests if d.service_port == 80 and d.forward == "route"] == [1, 0]


def test_ipvs_table_merges_connection_counters() -> None:
    case = FIXTURES / "ipvs_table" / "dr_director.txt"
    table = ipvs_table(case.read_text(), _aux(case, ".list.txt"))
    draining = next(d for d in table.destinations if d.address == "10.77.0.23")
    assert (draining.weight, draining.active_connections, draining.inactive_connections) == (
        0,
        3,
        7,
    )
    local = next(d for d in table.destinations if d.service_fwmark == 7)
    assert local.forward == "route" and local.active_connections == 0
    v6 = next(d for d in table.destinations if d.address == "2001:db8::21")
    assert v6.inactive_connections == 2


def test_ipvs_destination_missing_from_listing_keeps_unknown_counters() -> None:
    case = FIXTURES / "ipvs_table" / "listing_lost_a_destination.txt"
    table = ipvs_table(case.read_text(), _aux(case, ".list.txt"))
    lost = next(d for d in table.destinations if d.service_fwmark == 7)
    assert lost.active_connections is None


def test_ipvs_unknown_option_is_an_error() -> None:
    with pytest.raises(FactParseError):
        parse_ipvsadm_save("-A -t 1.2.3.4:80 -s wlc --frobnicate\n")


# --- nft, ip addr, keepalived ----------------------------------------------------------------


def test_nft_owned_tables_are_canonical_across_traffic() -> None:
    before = parse_nft_ruleset((FIXTURES / "nft_ruleset" / "shoal_tables.txt").read_text())
    after = parse_nft_ruleset(
        (FIXTURES / "nft_ruleset" / "shoal_tables_after_traffic.txt").read_text()
    )
    assert before == after
    table = before.table("ip", "shoal_redirect")
    assert table is not None and table.canonical_json
    assert '"handle"' not in table.canonical_json and '"packets"' not in table.canonical_json
    # Tables shoal does not own are listed, never copied.
    other = before.table("inet", "other_fw")
    assert other is not None and other.canonical_json == ""


def test_ip_addr_vip_on_lo_and_label() -> None:
    text = (FIXTURES / "ip_addr" / "vip_on_lo_label_ipv6.txt").read_text()
    ifaces = {i.name: i for i in parse_ip_addr(text)}
    lo = {(a.address, a.prefix) for a in ifaces["lo"].addresses}
    assert ("10.77.0.100", 32) in lo
    labelled = [a for a in ifaces["eth0"].addresses if a.label == "eth0:1"]
    assert [(a.address, a.prefix) for a in labelled] == [("10.77.0.150", 24)]
    assert any(a.family == "inet6" for a in ifaces["eth0"].addresses)


def test_keepalived_version() -> None:
    text = (FIXTURES / "keepalived_version" / "debian12.txt").read_text()
    assert parse_keepalived_version(text) == "2.2.7"
