"""Zero-loss ARP method change under real client traffic (issue 6, part 4 d).

The cluster's real servers go from the sysctl method (arp_ignore/arp_announce, VIP on lo) to
nft-arp (table `arp shoal_arp`, VIP on eth0) and back, through the real code path, while client1
sends a bounded stream of HTTP requests to the VIP and, at the same time, a broadcast ARP
request for the VIP every 50 ms (`arp_probe.py`). The planner must put the new suppression in
place before the VIP moves and remove the old one only after: no request may fail, and no host
but the director (lvs1) may answer ARP for the VIP at any moment of either change.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab import Lab
from tests.lab.rollout_support import Rollout, assert_lossless, rollout_lab

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

ARP_PROBE = Path(__file__).with_name("arp_probe.py")


@pytest.fixture(scope="module")
async def rollout(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rollout]:
    async with rollout_lab(tmp_path_factory) as r:
        yield r


async def _arp_responders(lab: Lab, vip: str, stop_file: str) -> list[str]:
    """MACs answering broadcast ARP requests for `vip` (every 50 ms) until `stop_file` exists."""
    res = await lab.exec("client1", ["python3", "-", "--vip", vip, "--interval", "0.05",
                                     "--duration", "120", "--until", stop_file],
                         input=ARP_PROBE.read_text(), timeout=150)  # fmt: skip
    return [str(mac) for _, mac in json.loads(str(res.stdout))["replies"]]


async def test_d_arp_method_change_loses_nothing_and_never_leaks_arp(rollout: Rollout) -> None:
    lab = rollout.lab
    weights = {"web1": 1, "web2": 2}
    await rollout.ensure(weights, "sysctl")
    director = lab.hosts["lvs1"].mac.lower()
    for method, vip_dev in (("nft-arp", "eth0"), ("sysctl", "lo")):
        stop_file = f"/tmp/shoal-arp-{secrets.token_hex(3)}"
        arp = asyncio.ensure_future(_arp_responders(lab, rollout.vip, stop_file))
        try:
            _, load = await rollout.change(weights, method)
        finally:
            await lab.exec("client1", ["touch", stop_file])
        macs = await arp
        assert_lossless(load, {"web1", "web2"})
        assert len(macs) >= 20 and set(macs) == {director}, (method, macs)
        for h in weights:
            addrs = await lab.exec(h, ["ip", "-br", "addr", "show", "to", f"{rollout.vip}/32"])
            devs = [ln.split()[0].split("@")[0] for ln in str(addrs.stdout).splitlines()]
            assert devs == [vip_dev], (h, method, addrs.stdout)
        print(f"{method}: {len(macs)} ARP replies, all from lvs1")
