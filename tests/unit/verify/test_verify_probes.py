"""The verification's probe tables (nft text, checked by nft itself) and the traffic probe run
standalone, as a client runs it; the tools' output parsers are in tests/unit/facts."""

from __future__ import annotations

import json
import subprocess
import sys

from reconciler.desired.models import Service
from reconciler.verify.counters import CounterTable, from_vip, to_vip
from reconciler.verify.probe_traffic import probe_source
from reconciler.verify.result import VerificationFailure


def test_counter_table_ruleset_counts_syns_to_the_vip_and_replies_from_it() -> None:
    svc = Service(name="http", vip="10.77.0.100", port=80)
    tab = CounterTable("lvs1", "eth0", "shoal_verify_0a1b2c3d")
    fwd = tab.add(to_vip("10.77.0.31", svc, syn_only=False))
    syn = tab.add(to_vip("10.77.0.31", svc, syn_only=True))
    ret = tab.add(from_vip("10.77.0.31", svc))
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
    assert to_vip("10.77.0.31", svc, syn_only=True) == (
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
