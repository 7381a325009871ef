"""The parsers verification reads its tools' output with, on outputs captured from the real
tools (fixtures/verify/): arping, ndisc6, `ip -j neigh`, `nft -j list counters`, and `ip -j addr` as
verification sees it (the facts parser, IPv4 addresses and well-formed MACs only)."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.facts.parsers.arping import parse_arping
from reconciler.facts.parsers.ip_addr import parse_ip_addr
from reconciler.facts.parsers.ip_neigh import parse_ip_neigh
from reconciler.facts.parsers.ndisc6 import parse_ndisc6
from reconciler.facts.parsers.nft_counters import parse_nft_counters
from reconciler.verify.judge import ipv4_addresses, link_mac

FIX = Path(__file__).resolve().parents[3] / "fixtures" / "verify"


def _read(name: str) -> str:
    return (FIX / name).read_text(encoding="utf-8")


def test_arping_two_responders_are_both_listed_once_in_first_seen_order() -> None:
    assert parse_arping(_read("arping-two-responders.txt")) == [
        "7a:15:8e:79:c2:36",
        "42:8c:d5:14:1b:bd",
    ]


def test_arping_one_responder_and_none() -> None:
    assert parse_arping(_read("arping-one-responder.txt")) == ["92:aa:34:aa:41:f1"]
    assert parse_arping(_read("arping-no-responder.txt")) == []


def test_ndisc6_lists_every_advertiser_once_and_none_when_it_timed_out() -> None:
    assert parse_ndisc6(_read("ndisc6-two-responders.txt")) == [
        "02:73:6c:02:00:16",
        "02:73:6c:02:00:0b",
    ]
    assert parse_ndisc6(_read("ndisc6-no-responder.txt")) == []


def test_neighbour_entry_and_missing_entry() -> None:
    assert parse_ip_neigh(_read("ip-neigh.json")) == "92:aa:34:aa:41:f1"
    assert parse_ip_neigh(_read("ip-neigh-empty.json")) is None


def test_ip_addr_gives_mac_and_ipv4_per_interface() -> None:
    links = {link.name: link for link in parse_ip_addr(_read("ip-addr.json"))}
    assert link_mac(links["eth0"]) == "42:8c:d5:14:1b:bd"
    assert set(ipv4_addresses(links["eth0"])) == {"10.99.0.2", "10.99.0.100"}
    assert ipv4_addresses(links["lo"]) == ("127.0.0.1",)


def test_only_a_well_formed_mac_is_kept_and_in_lower_case() -> None:
    # The MAC goes into nft rules on other hosts: anything else than six octets is dropped.
    data = json.loads(_read("ip-addr.json"))
    data[1]["address"] = "42:8C:D5:14:1B:BD"
    data[0]["address"] = "0.0.0.0"  # what an ipip tunnel reports
    links = {link.name: link for link in parse_ip_addr(json.dumps(data))}
    assert link_mac(links["eth0"]) == "42:8c:d5:14:1b:bd"
    assert link_mac(links["lo"]) is None


def test_counters_by_name() -> None:
    assert parse_nft_counters(_read("nft-counters.json")) == {"c0": 2, "c1": 0}
