"""The verification phase on real lab hosts, configured by hand (no planner involved).

The module turns the session lab into a working LVS-DR cluster with the corrected commands:
real servers web1 (weight 1) and web2 (weight 2) suppress ARP with sysctls and hold the VIP on
`lo`; director lvs1 holds the VIP on eth0 and forwards with a netdev table that rewrites both
MACs by a hash of the client's address and port (the nftables director backend, by hand); the
lab HTTP service answers on each real server. Then `verify_desired` must pass, and must fail
naming web2 once web2 stops suppressing ARP.

A lab comes up in well under a second, so this module brings up its own (random id, removed at
the end) instead of changing the hosts of the session lab other modules share; it still undoes
its setup first, so a failure leaves no half-configured cluster behind while the lab goes down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import Lab, Topology, prerequisites
from lab.httpd import run_load, start_services, stop_services
from reconciler.desired.models import (
    Cluster,
    ClusterHeader,
    Desired,
    HealthCheck,
    Host,
    Inventory,
    RealServer,
    Service,
    Settings,
    VerifySettings,
)
from reconciler.transport.ssh import SSHTransport
from reconciler.verify.result import VerificationResult
from reconciler.verify.run import verify_desired

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

VIP_OCTET = 100  # the fixture repo's VIP (10.77.0.100, moved into this lab's subnet)
PORT = 80
TABLE = "shoal_vtest_dsr"
WEIGHTS = {"web1": 1, "web2": 2}
SUPPRESS = {"arp_ignore": "1", "arp_announce": "2"}
SYSCTL_KEYS = [f"net.ipv4.conf.{dev}.{k}" for dev in ("all", "eth0") for k in SUPPRESS]


@dataclass
class DrLab:
    lab: Lab
    vip: str
    desired: Desired
    transport: SSHTransport


def _dsr_ruleset(lab: Lab, vip: str) -> str:
    """lvs-tests/dsr.nft with this lab's MACs: each weight unit is one slot of the hash map."""
    slots = [lab.hosts[h].mac for h, w in WEIGHTS.items() for _ in range(w)]
    mapping = ", ".join(f"{i} : {mac}" for i, mac in enumerate(slots))
    return f"""table netdev {TABLE} {{
	map svc {{
		type inet_proto . ipv4_addr . inet_service : verdict
		elements = {{ tcp . {vip} . {PORT} : goto vs_http }}
	}}
	chain ingress_eth0 {{
		type filter hook ingress device "eth0" priority 101; policy accept;
		ip protocol . ip daddr . th dport vmap @svc
	}}
	chain vs_http {{
		ether saddr set {lab.hosts["lvs1"].mac} ether daddr set jhash ip saddr . tcp sport mod {len(slots)} map {{ {mapping} }} fwd to "eth0"
	}}
}}
"""  # noqa: E501 - one nft statement per line reads best


def _desired(lab: Lab, vip: str) -> Desired:
    hosts = {
        name: Host(name=name, address=h.address, interface=h.interface)
        for name, h in lab.hosts.items()
    }
    service = Service(
        name="http",
        vip=vip,
        port=PORT,
        check=HealthCheck(type="http", path="/"),
        real_servers=tuple(RealServer(host=h, weight=w) for h, w in WEIGHTS.items()),
    )
    cluster = Cluster(
        cluster=ClusterHeader(name="web", directors=("lvs1", "lvs2"), director="nftables"),
        services=(service,),
    )
    return Desired(
        settings=Settings(
            verify=VerifySettings(clients=("client1",), requests_per_server=10, timeout=1.0)
        ),
        inventory=Inventory(hosts=hosts),
        clusters={"web": cluster},
        known_hosts=lab.known_hosts_path.read_text(encoding="utf-8"),
    )


async def _sysctls(lab: Lab, host: str) -> dict[str, str]:
    res = await lab.exec(host, ["sysctl", "-n", *SYSCTL_KEYS])
    return dict(zip(SYSCTL_KEYS, str(res.stdout).split(), strict=True))


async def _set_sysctls(lab: Lab, host: str, values: dict[str, str]) -> None:
    await lab.exec(host, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())])


@pytest.fixture(scope="module")
async def verify_lab() -> AsyncIterator[Lab]:
    missing = prerequisites()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"lab tests must run under CI; missing: {', '.join(missing)}")
        pytest.skip(f"no lab here: missing {', '.join(missing)}")
    async with Lab.up(f"v{secrets.token_hex(3)}", Topology.default()) as lab:
        yield lab


@contextlib.asynccontextmanager
async def hand_configured_cluster(lab: Lab) -> AsyncIterator[DrLab]:
    """The DR cluster set up by hand on `lab` for the block, torn down after it."""
    vip = str(ipaddress.IPv4Network(lab.subnet)[VIP_OCTET])
    saved = {h: await _sysctls(lab, h) for h in WEIGHTS}
    try:
        for h in WEIGHTS:
            # ARP suppression first, then the VIP (the safe join order).
            await _set_sysctls(lab, h, {k: SUPPRESS[k.rsplit(".", 1)[1]] for k in SYSCTL_KEYS})
            await lab.exec(h, ["ip", "addr", "add", f"{vip}/32", "dev", "lo"])
        await start_services(lab, [PORT], hosts=list(WEIGHTS))
        await lab.exec("lvs1", ["nft", "-f", "-"], input=_dsr_ruleset(lab, vip))
        await lab.exec("lvs1", ["ip", "addr", "add", f"{vip}/32", "dev", "eth0"])
        desired = _desired(lab, vip)
        async with SSHTransport(
            desired.inventory, lab.known_hosts_path, lab.client_key_path
        ) as transport:
            yield DrLab(lab, vip, desired, transport)
    finally:
        await lab.exec("lvs1", ["ip", "addr", "del", f"{vip}/32", "dev", "eth0"], check=False)
        await lab.exec("lvs1", ["nft", "delete", "table", "netdev", TABLE], check=False)
        await stop_services(lab, hosts=list(WEIGHTS))
        for h, values in saved.items():
            await lab.exec(h, ["ip", "addr", "del", f"{vip}/32", "dev", "lo"], check=False)
            await _set_sysctls(lab, h, values)
        await lab.exec("client1", ["ip", "neigh", "del", vip, "dev", "eth0"], check=False)


@pytest.fixture(scope="module")
async def dr(verify_lab: Lab) -> AsyncIterator[DrLab]:
    async with hand_configured_cluster(verify_lab) as cluster:
        yield cluster


def _explain(result: VerificationResult) -> str:
    return result.model_dump_json(indent=2)


async def test_load_generator_reaches_both_real_servers(dr: DrLab) -> None:
    load = await run_load(dr.lab, "client1", dr.vip, PORT, count=40, timeout=2.0)
    assert load["failed"] == 0, load
    assert set(load["answered_by"]) == set(WEIGHTS), load
    assert sum(load["answered_by"].values()) == 40


async def test_verification_passes_and_replies_bypass_the_director(dr: DrLab) -> None:
    result = await verify_desired(dr.desired, dr.transport)
    assert result.ok, _explain(result)
    (svc,) = result.services
    assert svc.director == "lvs1"
    assert svc.failed == 0 and svc.ok == svc.requests >= 30
    for rs in svc.real_servers:
        # Counted on the host by its own nft counter, and confirmed by the replies' bodies.
        assert rs.received is not None and rs.received > 0, _explain(result)
        assert rs.received == rs.answered, _explain(result)
    assert sum(svc.distribution.values()) == svc.ok
    # Direct return: the director saw the requests and none of the replies.
    assert svc.forward_packets is not None and svc.forward_packets >= svc.ok
    assert svc.return_packets == 0
    assert all(rs.via_director == 0 for rs in svc.real_servers)
    (arp,) = result.arp
    assert [r.host for r in arp.responders] == ["lvs1"]
    assert arp.expected_mac == dr.lab.hosts["lvs1"].mac.lower()
    assert arp.neighbour_host == "lvs1"
    # The probe's counter tables are gone again.
    for host in ("lvs1", *WEIGHTS):
        tables = await dr.lab.exec(host, ["nft", "list", "tables"])
        assert "shoal_verify_" not in str(tables.stdout)


async def test_verification_names_a_real_server_that_answers_arp(dr: DrLab) -> None:
    before = await _sysctls(dr.lab, "web2")
    try:
        # web2 forgets its ARP suppression: with the VIP on lo it now answers ARP for it.
        await _set_sysctls(dr.lab, "web2", {k: "0" for k in SYSCTL_KEYS})
        result = await verify_desired(dr.desired, dr.transport)
    finally:
        await _set_sysctls(dr.lab, "web2", before)
        await dr.lab.exec("client1", ["ip", "neigh", "del", dr.vip, "dev", "eth0"], check=False)
    assert not result.ok
    arp_failures = [f for f in result.failures if f.check == "arp"]
    assert [f.host for f in arp_failures] == ["web2"], _explain(result)
    assert f"web2 answers ARP for {dr.vip}" in arp_failures[0].message
    (arp,) = result.arp
    assert sorted(r.host or "?" for r in arp.responders) == ["lvs1", "web2"]

    # Repaired, the same cluster verifies again.
    again = await verify_desired(dr.desired, dr.transport)
    assert again.ok, _explain(again)


async def test_verification_names_a_real_server_whose_replies_pass_the_director(dr: DrLab) -> None:
    client = dr.lab.hosts["client1"].address
    lvs1 = dr.lab.hosts["lvs1"].address
    # web1 routes its replies to the client through lvs1 (a NAT-style gateway): the reply frames
    # now go to lvs1's MAC, where the probe's per-real-server return counter sees them.
    await dr.lab.exec("web1", ["ip", "route", "add", f"{client}/32", "via", lvs1])
    try:
        result = await verify_desired(dr.desired, dr.transport)
    finally:
        await dr.lab.exec("web1", ["ip", "route", "del", f"{client}/32", "via", lvs1])
    assert not result.ok
    (svc,) = result.services
    by_host = {rs.host: rs for rs in svc.real_servers}
    assert by_host["web1"].via_director, _explain(result)
    assert by_host["web2"].via_director == 0
    hosts = {f.host for f in result.failures if f.check == "traffic"}
    assert "web1" in hosts and "web2" not in hosts, _explain(result)
    assert any("web1 sends its replies" in f.message for f in result.failures)


async def test_shoal_verify_command_on_the_fixture_repo(dr: DrLab, tmp_path: Path) -> None:
    """`shoal verify REPO --json` on fixtures/config-repo, rewritten for this lab."""
    repo = tmp_path / "repo"
    dr.lab.write_config_repo(Path(__file__).parents[2] / "fixtures" / "config-repo", repo)
    shoal = Path(sys.executable).with_name("shoal")
    proc = await asyncio.create_subprocess_exec(
        str(shoal), "verify", str(repo), "--key", str(dr.lab.client_key_path), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, (out.decode(), err.decode())
    doc = json.loads(out)
    assert doc["ok"] is True and doc["failures"] == []
    (dist,) = doc["distribution"].values()
    assert set(dist) == {"web1", "web2"} and all(n > 0 for n in dist.values()), doc
    assert [r["host"] for r in doc["arp"][0]["responders"]] == ["lvs1"]
