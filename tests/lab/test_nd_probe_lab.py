"""The Neighbour Discovery probe on real hosts: the solicitation it sends from a client reaches
every host of the lab (flooded solicited-node multicast), and it reports each MAC that answers
for the VIP, no more and no fewer, through the verification's own step (real SSH), and so does
its ndisc6 fallback. A /128 on `lo` is not answered for on eth0: the first half of the claim
the real servers' IPv6 VIPs rest on (tests/lab/test_dual_stack_nft_lab.py proves the rest)."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab import Lab
from reconciler.desired.loader import load_repository
from reconciler.facts.parsers.ndisc6 import parse_ndisc6
from reconciler.transport.ssh import SSHTransport
from reconciler.verify.nd import nd_responders
from reconciler.verify.session import Session

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

REPO = Path(__file__).resolve().parents[2]
VIP_HOST_PART = 0x178  # ::178, not a VIP any other test uses


@contextlib.asynccontextmanager
async def vip_on(lab: Lab, placements: list[tuple[str, str]], vip: str) -> AsyncIterator[None]:
    """`vip`/128 on (host, device) for the block; removed afterwards whatever happens."""
    try:
        for host, dev in placements:
            await lab.exec(host, ["ip", "addr", "add", f"{vip}/128", "dev", dev, "nodad"])
        yield
    finally:
        for host, dev in placements:
            await lab.exec(host, ["ip", "addr", "del", f"{vip}/128", "dev", dev], check=False)


async def test_the_probe_names_exactly_the_hosts_that_answer(lab: Lab, tmp_path: Path) -> None:
    vip = str(ipaddress.IPv6Network(lab.subnet6).network_address + VIP_HOST_PART)
    repo = tmp_path / "repo"
    lab.write_config_repo(REPO / "fixtures" / "config-repo", repo)
    desired = load_repository(repo)
    mac = {name: h.mac for name, h in lab.hosts.items()}
    async with SSHTransport(desired.inventory, lab.known_hosts_path, lab.client_key_path) as t:
        session = Session(desired, t, None, None)

        async def asked_from(client: str) -> list[str]:
            return await nd_responders(session, client, vip)

        # Nobody holds it: nobody answers (the judge calls that a VIP that is down).
        assert await asked_from("client1") == []
        async with vip_on(lab, [("lvs1", "eth0"), ("web1", "lo"), ("web3", "lo")], vip):
            # Held on eth0 by lvs1 only; web1 and web3 hold it on lo, and stay silent.
            for client in ("client1", "web2"):
                assert await asked_from(client) == [mac["lvs1"]], client
            async with vip_on(lab, [("web2", "eth0")], vip):
                assert sorted(await asked_from("client1")) == sorted([mac["lvs1"], mac["web2"]])
                # ndisc6 (the fallback without a packet socket) sees the same two.
                out = await lab.exec(
                    "client1", ["ndisc6", "-m", "-n", "-r", "2", "-w", "300", vip, "eth0"]
                )
                assert sorted(parse_ndisc6(out.stdout)) == sorted([mac["lvs1"], mac["web2"]])
