"""Pure parts of the verification phase, on outputs captured from real tools (fixtures/verify/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from reconciler.desired.models import Service
from reconciler.verify.probe_traffic import probe_source
from reconciler.verify.run import (
    VerificationFailure,
    _CounterTable,
    _from_vip,
    _to_vip,
    parse_arping,
    parse_counters_json,
    parse_ip_addr_json,
    parse_neigh_json,
)

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


def test_neighbour_entry_and_missing_entry() -> None:
    assert parse_neigh_json(_read("ip-neigh.json")) == "92:aa:34:aa:41:f1"
    assert parse_neigh_json(_read("ip-neigh-empty.json")) is None


def test_ip_addr_gives_mac_and_ipv4_per_interface() -> None:
    links = {link.name: link for link in parse_ip_addr_json(_read("ip-addr.json"))}
    assert links["eth0"].mac == "42:8c:d5:14:1b:bd"
    assert set(links["eth0"].addresses) == {"10.99.0.2", "10.99.0.100"}
    assert links["lo"].addresses == ("127.0.0.1",)


def test_counters_by_name() -> None:
    assert parse_counters_json(_read("nft-counters.json")) == {"c0": 2, "c1": 0}


def test_counter_table_ruleset_counts_syns_to_the_vip_and_replies_from_it() -> None:
    svc = Service(name="http", vip="10.77.0.100", port=80)
    tab = _CounterTable("lvs1", "eth0", "shoal_verify_0a1b2c3d")
    fwd = tab.add(_to_vip("10.77.0.31", svc, syn_only=False))
    syn = tab.add(_to_vip("10.77.0.31", svc, syn_only=True))
    ret = tab.add(_from_vip("10.77.0.31", svc))
    text = tab.ruleset()
    assert (fwd, syn, ret) == ("c0", "c1", "c2")
    assert 'hook ingress device "eth0" priority -300; policy accept;' in text
    assert (
        'ip saddr 10.77.0.31 ip daddr 10.77.0.100 tcp dport 80 tcp flags & (syn | ack) == syn '
        'counter name "c1"'
    ) in text
    assert 'ip saddr 10.77.0.100 ip daddr 10.77.0.31 tcp sport 80 counter name "c2"' in text
    # nft itself accepts it (check mode: nothing is changed).
    res = subprocess.run(["nft", "-c", "-f", "-"], input=text, text=True, capture_output=True)
    if res.returncode != 0 and "Operation not permitted" not in res.stderr:
        raise AssertionError(res.stderr)


def test_udp_counts_every_datagram() -> None:
    svc = Service(name="dns", vip="10.77.0.101", port=53, protocol="udp")
    assert _to_vip("10.77.0.31", svc, syn_only=True) == (
        "ip saddr 10.77.0.31 ip daddr 10.77.0.101 udp dport 53"
    )


def test_failure_prints_its_message() -> None:
    f = VerificationFailure(check="arp", host="web2", message="web2 answers ARP for 10.77.0.100")
    assert str(f) == "web2 answers ARP for 10.77.0.100"


def test_probe_source_runs_standalone_and_reports_refusals() -> None:
    # The probe is shipped as text; run it the same way (python3 -) against a closed port of a
    # loopback address, which refuses at once.
    res = subprocess.run(
        [sys.executable, "-", "--vip", "127.0.0.1", "--port", "9", "--count", "5",
         "--timeout", "1", "--max-failures", "2"],
        input=probe_source(), text=True, capture_output=True, check=True,
    )
    out = json.loads(res.stdout)
    assert out["ok"] == 0 and out["failed"] == 5 and out["sent"] == 2
    assert out["errors"] == {"refused": 2, "skipped after failures": 3}
