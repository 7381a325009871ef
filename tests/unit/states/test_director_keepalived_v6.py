"""The keepalived director backend with IPv6: a dual-stack keepalived.conf, `keepalived -t`."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from states.keepalived import validate_argv
from states.keepalived_conf import parse_rs_key, render_keepalived_conf, rs_key
from tests.unit.states.director_fixtures import ADDRESSES6, desired, facts, plan
from tests.unit.states.test_director_keepalived import _keepalived

VIP6 = "fd78:1::100"
CHECK = {"type": "http", "path": "/healthz", "expect": 200}


def _services(v4: bool = True) -> list[dict[str, Any]]:
    rs = [{"host": "web1", "weight": 1}, {"host": "web2", "weight": 2}]
    out = [{"name": "http6", "vip": VIP6, "port": 80, "check": CHECK, "real_server": rs},
           {"name": "dns6", "vip": "fd78:1::101", "port": 53, "protocol": "udp",
            "persistence": 60, "real_server": [{"host": "web3"}]}]  # fmt: skip
    if v4:
        out.append({"name": "http", "vip": "10.77.0.100", "port": 80, "check": CHECK,
                    "real_server": rs})  # fmt: skip
    return out


def _check(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    _keepalived()
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text)
    return subprocess.run(validate_argv(str(conf), text), capture_output=True, text=True)


def test_dual_stack_instance_keeps_ipv6_vips_excluded() -> None:
    text = render_keepalived_conf(desired("keepalived", _services(), dual=True), "lvs1")
    assert (
        "    virtual_ipaddress {\n"
        "        10.77.0.100/32 dev eth0\n"
        "    }\n"
        "    virtual_ipaddress_excluded {\n"
        "        fd78:1::100/128 dev eth0\n"
        "        fd78:1::101/128 dev eth0\n"
        "    }\n"
        "}\n"
    ) in text
    # IPv4 virtual servers first, then IPv6; real servers by their address of the VIP's family.
    v6_at = text.index(f"virtual_server {VIP6} 80 {{")
    assert text.index("virtual_server 10.77.0.100 80 {") < v6_at
    block = text[v6_at:]
    assert f"    real_server {ADDRESSES6['web1']} 80 {{" in block
    assert f"    real_server {ADDRESSES6['web2']} 80 {{" in block
    assert "virtual_server fd78:1::101 53 {" in text and "    protocol UDP\n" in text


def test_ipv6_only_instance_holds_its_vips_itself() -> None:
    text = render_keepalived_conf(desired("keepalived", _services(v4=False), dual=True), "lvs2")
    assert "        fd78:1::100/128 dev eth0\n        fd78:1::101/128 dev eth0\n    }\n}" in text
    assert "virtual_ipaddress_excluded" not in text


def test_keepalived_accepts_dual_stack_and_ipv6_only(tmp_path: Path) -> None:
    for v4 in (True, False):
        for host in ("lvs1", "lvs2"):
            text = render_keepalived_conf(desired("keepalived", _services(v4), dual=True), host)
            res = _check(text, tmp_path)
            assert res.returncode == 0, res.stderr


def test_keepalived_refuses_mixed_families_in_one_virtual_ipaddress(tmp_path: Path) -> None:
    """The rule the excluded block exists for, shown by keepalived itself."""
    text = render_keepalived_conf(desired("keepalived", _services(), dual=True), "lvs1")
    mixed = text.replace("    }\n    virtual_ipaddress_excluded {\n", "")
    res = _check(mixed, tmp_path)
    assert res.returncode != 0
    assert "address family must match VRRP instance" in res.stdout + res.stderr


def test_ledger_keys_and_drain_of_a_leaving_ipv6_real_server(tmp_path: Path) -> None:
    key = rs_key("tcp", VIP6, 80, "fd78:1::23")
    assert key == f"tcp [{VIP6}]:80 [fd78:1::23]:80"
    assert parse_rs_key(key) == ("tcp", VIP6, 80, "fd78:1::23")
    d = desired("keepalived", _services(), dual=True)
    owned = {"keepalived.real_server": (key,)}
    lows, steps, _ = plan(d, {h: facts(h, ledger=owned) for h in ("lvs1", "lvs2")})
    low = next(lw for lw in lows if lw.host == "lvs1" and lw.id == "keepalived-conf")
    assert low.args["drains"] == [{"service": f"tcp [{VIP6}]:80",
                                   "real_server": "[fd78:1::23]:80"}]  # fmt: skip
    assert "        fd78:1::23 80 {" not in low.args["drain_content"]
    assert "    real_server fd78:1::23 80 {\n        weight 0\n    }" in low.args["drain_content"]
    assert low.args["ledger"][0] == {"function": "keepalived.real_server", "op": "remove",
                                     "keys": [key]}  # fmt: skip
    assert f"tcp [{VIP6}]:80 [{ADDRESSES6['web1']}]:80" in low.args["ledger"][1]["keys"]
    assert steps
    res = _check(low.args["drain_content"], tmp_path)
    assert res.returncode == 0, res.stderr
