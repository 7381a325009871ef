"""keepalived on both directors, VRRP owning the VIP, and a failover of the primary (issue 6, 4e).

shoal applies a `keepalived` cluster (lvs1 primary, rendered `state MASTER`; lvs2 `BACKUP`) to a
lab of the module's own through the real code path; shoal starts a real keepalived on each
director, inside that lab host's namespaces. VRRP then owns the VIP: it is on lvs1 only, and
ARP for it is answered by lvs1's MAC only. Stopping lvs1's keepalived (SIGTERM to the pid in its
pid file) must move the VIP to lvs2 within seconds, after which only lvs2's MAC answers ARP. A
new apply sees the stopped daemon as drift and starts it again; lvs1, the higher priority, takes
the VIP back.

What this measures, and what it cannot: this machine's kernel has no IPVS, so keepalived's
virtual_server part is only validated (`keepalived -t`, a step of every config install) and
real-server traffic cannot flow through keepalived here. On such a kernel keepalived's checker
exits FATAL at start and takes the daemon with it, so the lab directors run keepalived's VRRP
subsystem only: `DAEMON_ARGS="--vrrp"` in /etc/default/keepalived, the file Debian's unit reads
and shoal's own start honours. The failover window is therefore measured at the VRRP/ARP level:
from client1, a broadcast ARP request for the VIP every 50 ms and an HTTP request every 50 ms to
a lab service bound on both directors (port 8080, answering with the hostname); the window is
the time from the stop to the first answer from lvs2 (and to lvs2's first ARP reply).

keepalived is stopped on both directors at the end, by its pid file.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, Topology
from lab.httpd import start_services, stop_services
from reconciler.desired.models import Desired
from states.keepalived import CONF_PATH, PID_DIR
from tests.conftest import require_lab
from tests.lab.rollout_support import (
    VIP_OCTET,
    cluster_toml,
    converge,
    explain,
    pending,
    write_repo,
)

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

DIRECTORS = ("lvs1", "lvs2")
PROBE_PORT = 8080  # the directors' own lab service (not the LVS service on PORT)
PID_FILE = f"{PID_DIR}/keepalived.pid"
DAEMON_ARGS_SETUP = (
    "mkdir -p /etc/default && echo 'DAEMON_ARGS=\"--vrrp\"' >/etc/default/keepalived"
)
ARP_PROBE = Path(__file__).with_name("arp_probe.py")
VIP_PROBE = Path(__file__).with_name("vip_probe.py")
MAX_WINDOW = 5.0  # seconds; VRRP with advert_int 1 and a priority-0 advert on a clean stop
# The executor's verification sends traffic through the VIP to the real servers, which needs
# IPVS: off here (see the module docstring).
SETTINGS = """\
approval = "auto"

[apply]
batch_size = 2
lockout_timeout = 30

[verify]
enabled = false
"""


def keepalived_cluster_toml(vip: str) -> str:
    weights = {"web1": 1, "web2": 2}
    return cluster_toml(vip, weights, director="keepalived", check='{ type = "tcp" }')


@dataclass
class Failover:
    lab: Lab
    vip: str
    desired: Desired


async def _keepalived_pid(lab: Lab, host: str) -> int | None:
    res = await lab.exec(host, ["sh", "-c", f'p=$(cat {PID_FILE}) && kill -0 "$p" && echo "$p"'],
                         check=False)  # fmt: skip
    text = str(res.stdout).strip()
    return int(text) if res.returncode == 0 and text.isdigit() else None


async def _stop_keepalived(lab: Lab, host: str) -> None:
    pid = await _keepalived_pid(lab, host)
    if pid is None:
        return
    await lab.exec(host, ["kill", str(pid)], check=False)
    for _ in range(100):
        if await _keepalived_pid(lab, host) is None:
            return
        await asyncio.sleep(0.05)
    await lab.exec(host, ["kill", "-KILL", str(pid)], check=False)


async def _holders(lab: Lab, vip: str) -> list[str]:
    """Directors whose eth0 holds the VIP."""
    out = []
    for h in DIRECTORS:
        res = await lab.exec(h, ["ip", "-br", "addr", "show", "dev", "eth0", "to", f"{vip}/32"])
        if str(res.stdout).strip():
            out.append(h)
    return out


async def _wait_holders(lab: Lab, vip: str, want: list[str], seconds: float = 15) -> None:
    give_up = time.monotonic() + seconds
    while (now := await _holders(lab, vip)) != want:
        if time.monotonic() > give_up:
            pytest.fail(f"VIP {vip} held by {now}, expected {want}")
        await asyncio.sleep(0.1)


async def _client_probe(lab: Lab, source: Path, args: list[str]) -> dict[str, list[list[Any]]]:
    res = await lab.exec("client1", ["python3", "-", *args], input=source.read_text(), timeout=90)
    data: dict[str, list[list[Any]]] = json.loads(str(res.stdout))
    return data


async def _arp_macs(lab: Lab, vip: str, seconds: float) -> list[str]:
    data = await _client_probe(lab, ARP_PROBE, ["--vip", vip, "--duration", str(seconds)])
    return [str(mac) for _, mac in data["replies"]]


@pytest.fixture(scope="module")
async def failover(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Failover]:
    require_lab()
    async with Lab.up(f"f{secrets.token_hex(3)}", Topology.default()) as lab:
        vip = str(ipaddress.IPv4Network(lab.subnet)[VIP_OCTET])
        desired = write_repo(
            lab, tmp_path_factory.mktemp("ka") / "repo", keepalived_cluster_toml(vip), SETTINGS
        )
        try:
            for h in DIRECTORS:
                await lab.exec(h, ["sh", "-c", DAEMON_ARGS_SETUP])
            await start_services(lab, [PROBE_PORT], hosts=list(DIRECTORS))
            yield Failover(lab, vip, desired)
        finally:
            for h in DIRECTORS:
                await _stop_keepalived(lab, h)
            await stop_services(lab, hosts=list(DIRECTORS))
            for h in DIRECTORS:
                assert await _keepalived_pid(lab, h) is None, f"keepalived still runs on {h}"


async def test_vrrp_owns_the_vip_and_fails_over_to_the_backup(failover: Failover) -> None:
    lab, vip = failover.lab, failover.vip
    macs = {h: lab.hosts[h].mac.lower() for h in DIRECTORS}

    result, after = await converge(lab, failover.desired)
    assert result is not None and result.ok, explain(result) if result else "nothing planned"
    assert after.empty, pending(after)
    validated = {s.host for s in result.steps() if s.id.endswith("/validate") and s.result}
    assert validated == set(DIRECTORS), explain(result)
    for h, state in (("lvs1", "MASTER"), ("lvs2", "BACKUP")):
        conf = await lab.exec(h, ["cat", CONF_PATH])
        assert f"state {state}" in conf.stdout and "lb_kind DR" in conf.stdout, conf.stdout
        # Started by shoal inside this lab host (its own pid and network namespace).
        pid = await _keepalived_pid(lab, h)
        assert pid is not None, f"keepalived is not running on {h}"

    # VRRP: the VIP on the primary only, and only its MAC answers ARP for it.
    await _wait_holders(lab, vip, ["lvs1"])
    arp = await _arp_macs(lab, vip, 1.0)
    assert len(arp) >= 10 and set(arp) == {macs["lvs1"]}, arp

    # Failover: stop lvs1's keepalived while client1 probes ARP and TCP every 50 ms.
    until = f"/tmp/shoal-failover-{secrets.token_hex(3)}"
    arp_task = asyncio.ensure_future(
        _client_probe(lab, ARP_PROBE, ["--vip", vip, "--until", until, "--duration", "60"])
    )
    tcp_task = asyncio.ensure_future(
        _client_probe(lab, VIP_PROBE, ["--vip", vip, "--port", str(PROBE_PORT), "--until",
                                       until, "--duration", "60"])
    )  # fmt: skip
    try:
        await asyncio.sleep(1.0)
        stopped = time.time()
        pid = await _keepalived_pid(lab, "lvs1")
        assert pid is not None
        await lab.exec("lvs1", ["kill", str(pid)])
        await _wait_holders(lab, vip, ["lvs2"], seconds=MAX_WINDOW + 5)
        await asyncio.sleep(1.0)
    finally:
        await lab.exec("client1", ["touch", until])
    arp_log = [(float(t), str(m)) for t, m in (await arp_task)["replies"]]
    tcp_log = [(float(t), w) for t, w in (await tcp_task)["attempts"]]

    before = [w for t, w in tcp_log if t < stopped]
    assert before and set(before) == {"lvs1"}, before
    answered = [(t, w) for t, w in tcp_log if t >= stopped and w is not None]
    first_lvs2 = next(t for t, w in answered if w == "lvs2")
    # Once lvs2 answers, lvs1 never does again, and every later request is answered.
    later = [w for t, w in tcp_log if t >= first_lvs2]
    assert set(later) == {"lvs2"}, later
    tcp_window = first_lvs2 - stopped
    lost = sum(1 for t, w in tcp_log if stopped <= t < first_lvs2 and w != "lvs1")

    arp_first_lvs2 = next(t for t, m in arp_log if t >= stopped and m == macs["lvs2"])
    assert all(m == macs["lvs1"] for t, m in arp_log if t < stopped), arp_log
    assert {m for t, m in arp_log if t > arp_first_lvs2} == {macs["lvs2"]}, arp_log
    arp_window = arp_first_lvs2 - stopped
    print(f"\nfailover lvs1 -> lvs2: lvs2 answers TCP {tcp_window:.2f}s and ARP "
          f"{arp_window:.2f}s after keepalived on lvs1 was stopped; {lost} TCP probes "
          f"(every 50 ms) failed in between")  # fmt: skip
    assert 0 < tcp_window < MAX_WINDOW and 0 < arp_window < MAX_WINDOW

    # A stopped keepalived is drift: the next apply starts it again and lvs1 takes the VIP back.
    result, after = await converge(lab, failover.desired)
    assert result is not None and result.ok, explain(result) if result else "nothing planned"
    assert [s.id for s in result.steps()] == ["lvs1/keepalived-conf/start"], explain(result)
    assert after.empty, pending(after)
    await _wait_holders(lab, vip, ["lvs1"])
    arp = await _arp_macs(lab, vip, 1.0)
    assert len(arp) >= 10 and set(arp) == {macs["lvs1"]}, arp
