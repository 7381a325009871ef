"""The ipvsadm director backend with IPv6 services: bracketed argv and keys, captured facts.

The facts are `ipvsadm -Sn` / `-Ln` captured on a VM director (Debian 6.1, ipvsadm 1.31;
fixtures/facts/ipvs_table/vm_ipv6_dual.*), their addresses moved into the test inventory's prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.apply.drain_poll import drain_poll
from reconciler.desired.endpoint import endpoint
from reconciler.facts.parsers.ipvsadm import ipvs_table
from states.ipvs_argv import (
    destination_key,
    ipvs_restore_lines,
    observed_spec,
    service_key,
    split_endpoint,
)
from tests.unit.states.director_fixtures import ADDRESSES6, commands, desired, facts, plan

CAPTURE = Path(__file__).resolve().parents[3] / "fixtures" / "facts" / "ipvs_table"
VIP6 = "fd78:1::100"
KEY6 = f"tcp [{VIP6}]:80"


def _captured() -> Any:
    def ours(name: str) -> str:
        return (CAPTURE / name).read_text().replace("fd78:3:1:1::", "fd78:1::")

    return ipvs_table(ours("vm_ipv6_dual.txt"), ours("vm_ipv6_dual.list.txt"))


def _services(weight: int = 3) -> list[dict[str, Any]]:
    return [{"name": "http6", "vip": VIP6, "port": 80,
             "real_server": [{"host": "web1", "weight": weight}]}]  # fmt: skip


def test_endpoints_and_keys() -> None:
    assert endpoint("10.77.0.100", 80) == "10.77.0.100:80"
    assert endpoint(VIP6, 80) == f"[{VIP6}]:80"
    assert split_endpoint(f"[{VIP6}]:80") == (VIP6, 80)
    assert split_endpoint("10.77.0.100:80") == ("10.77.0.100", 80)
    with pytest.raises(ValueError):
        split_endpoint(f"{VIP6}:80")
    assert service_key("tcp", VIP6, 80) == KEY6
    assert destination_key("tcp", VIP6, 80, "fd78:1::21") == f"{KEY6} [fd78:1::21]:80"


def test_fresh_ipv6_service_uses_the_real_servers_ipv6_addresses() -> None:
    d = desired("ipvsadm", _services(), dual=True)
    lows, steps, skipped = plan(d, {h: facts(h) for h in ("lvs1", "lvs2")})
    assert skipped == []
    rip = ADDRESSES6["web1"]
    assert commands(steps, "lvs1") == [
        f"ipvsadm -A -t [{VIP6}]:80 -s wlc",
        f"ipvsadm -a -t [{VIP6}]:80 -r [{rip}]:80 -g -w 0",
        f"ipvsadm -e -t [{VIP6}]:80 -r [{rip}]:80 -g -w 3",
    ]
    rs = next(lw for lw in lows if lw.function == "ipvs.real_server_present")
    assert rs.args["ledger"][0]["keys"] == [f"{KEY6} [{rip}]:80"]
    vip = next(lw for lw in lows if lw.function == "addr.present")
    assert (vip.host, vip.args["address"], vip.args["prefix"]) == ("lvs1", VIP6, 128)
    assert ipvs_restore_lines(d, "lvs1") == [
        f"ipvsadm -A -t '[{VIP6}]:80' -s wlc",
        f"ipvsadm -a -t '[{VIP6}]:80' -r '[{rip}]:80' -g -w 3",
    ]


def test_captured_ipv6_table_is_in_sync() -> None:
    owned = {"ipvs.service_present": (KEY6,),
             "ipvs.real_server_present": (f"{KEY6} [fd78:1::21]:80",)}  # fmt: skip
    f = {h: facts(h, ipvs=_captured(), ledger=owned) for h in ("lvs1", "lvs2")}
    _, steps, skipped = plan(desired("ipvsadm", _services(), dual=True), f)
    assert steps == [] and skipped == []


def test_ipv6_prefix_netmask_default_is_no_change() -> None:
    by_port = {s.port: s for s in _captured().services if s.family == "inet6"}
    assert observed_spec(by_port[8443]) == ("-s", "wlc", "-p", "300")  # `-M 128` not printed
    assert observed_spec(by_port[443]) == ("-s", "sh", "-p", "300", "-M", "64")


def test_removed_ipv6_real_server_drains_by_its_bracketed_endpoint() -> None:
    owned = {"ipvs.service_present": (KEY6,),
             "ipvs.real_server_present": (f"{KEY6} [fd78:1::21]:80",)}  # fmt: skip
    f = {"lvs1": facts("lvs1", ipvs=_captured(), ledger=owned)}
    d = desired("ipvsadm", [{"name": "http6", "vip": VIP6, "port": 80, "real_server": []}],
                dual=True)  # fmt: skip
    _, steps, _ = plan(d, f)
    assert commands(steps, "lvs1") == [
        f"ipvsadm -e -t [{VIP6}]:80 -r [fd78:1::21]:80 -g -w 0",
        f"ipvsadm -d -t [{VIP6}]:80 -r [fd78:1::21]:80",
    ]
    drain = steps[0]
    assert drain.drain is not None
    assert (drain.drain.service, drain.drain.real_server) == (KEY6, "[fd78:1::21]:80")
    # The poll compares with `ipvsadm -Ln`'s `->` column, which brackets IPv6 the same way.
    listing = (CAPTURE / "vm_ipv6_dual.list.txt").read_text()
    assert "  -> [fd78:3:1:1::21]:80 " in listing
    script = drain_poll(0, drain)
    assert f"-t '[{VIP6}]:80'" in script and "rs='[fd78:1::21]:80'" in script


def test_removed_ipv6_service_from_the_ledger() -> None:
    owned = {"ipvs.service_present": (KEY6,),
             "ipvs.real_server_present": (f"{KEY6} [fd78:1::21]:80",)}  # fmt: skip
    f = {"lvs1": facts("lvs1", ipvs=_captured(), ledger=owned)}
    _, steps, _ = plan(desired("ipvsadm", [], dual=True), f)
    assert commands(steps, "lvs1")[-1] == f"ipvsadm -D -t [{VIP6}]:80"
