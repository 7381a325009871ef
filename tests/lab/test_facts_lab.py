"""Facts and transport against the lab's real hosts (sshd, kernels, arptables/nft/sysctls).

The session lab is only read, or changed and restored; the test that takes a host's link down
brings up its own two-host lab.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
import pytest_asyncio

from lab import Lab, Topology
from reconciler.desired.models import Host, Inventory
from reconciler.errors import CommandTimeout, HostKeyRejected
from reconciler.facts.gather import gather_facts
from reconciler.facts.hostfacts import HostFacts
from reconciler.transport.ssh import SSHTransport

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

REPO = Path(__file__).resolve().parents[2]


def inventory_of(lab: Lab, extra: dict[str, str] | None = None) -> Inventory:
    hosts = {n: Host(name=n, address=h.address) for n, h in lab.hosts.items()}
    for name, address in (extra or {}).items():
        hosts[name] = Host(name=name, address=address)
    return Inventory(hosts=hosts)


@pytest_asyncio.fixture(loop_scope="session")
async def transport(lab: Lab) -> AsyncIterator[SSHTransport]:
    async with SSHTransport(
        inventory_of(lab), lab.known_hosts_path, lab.client_key_path, connect_timeout=5
    ) as t:
        yield t


def _sshd_log_counts(lab: Lab, host: str) -> tuple[int, int]:
    """(connections, sessions) sshd logged so far on `host` (VERBOSE level)."""
    text = lab.sshd_log_path(host).read_text(errors="replace")
    return text.count("Connection from "), text.count("Starting session: ")


async def _wait_for_log(lab: Lab, host: str, sessions: int, timeout: float = 5.0) -> int:
    # sshd writes the session line from its child; give it a moment to land in the file.
    deadline = time.monotonic() + timeout
    while True:
        seen = _sshd_log_counts(lab, host)[1]
        if seen >= sessions or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.05)


async def test_gather_opens_one_channel_per_host(lab: Lab, transport: SSHTransport) -> None:
    hosts = sorted(lab.hosts)
    before = {h: _sshd_log_counts(lab, h) for h in hosts}
    started = time.perf_counter()
    facts = await gather_facts(transport, hosts)
    elapsed = time.perf_counter() - started
    assert transport.channels_opened == {h: 1 for h in hosts}
    assert transport.connections_opened == {h: 1 for h in hosts}
    for h in hosts:
        seen = await _wait_for_log(lab, h, before[h][1] + 1)
        after = _sshd_log_counts(lab, h)
        assert seen - before[h][1] == 1, f"{h}: sshd logged {seen - before[h][1]} sessions"
        assert after[0] - before[h][0] == 1, f"{h}: sshd logged {after[0] - before[h][0]} logins"
        assert facts[h].hostname.value == h
        # Only systemd-managed services can be unknown in the lab (no systemd in a namespace).
        assert set(facts[h].unknown_facts) <= {"services", "services_enabled"}, facts[h]
    # A second pass reuses the pooled connections: one more channel each, no new logins.
    await gather_facts(transport, hosts)
    assert transport.channels_opened == {h: 2 for h in hosts}
    assert transport.connections_opened == {h: 1 for h in hosts}
    print(f"facts of {len(hosts)} hosts (cold connections) in {elapsed * 1000:.0f} ms")


async def test_changed_host_key_is_refused_with_its_fingerprint(lab: Lab) -> None:
    lvs1, lvs2 = lab.hosts["lvs1"], lab.hosts["lvs2"]
    entries = [line.split() for line in lab.known_hosts_text().splitlines() if line.strip()]
    keys = {e[0]: (e[1], e[2]) for e in entries}
    real = asyncssh.import_public_key(" ".join(keys[lvs1.address]))
    # Pin lvs2's key for lvs1's address: what a replaced (or impersonated) lvs1 looks like.
    forged = "".join(
        f"{addr} {' '.join(keys[lvs2.address] if addr == lvs1.address else key)}\n"
        for addr, key in keys.items()
    )
    transport = SSHTransport(inventory_of(lab), forged, lab.client_key_path, connect_timeout=5)
    try:
        with pytest.raises(HostKeyRejected) as info:
            await transport.run("lvs1", ("true",))
        facts = await gather_facts(transport, ["lvs1", "lvs2"])
    finally:
        await transport.aclose()
    assert info.value.fingerprint == real.get_fingerprint("sha256")
    assert real.get_fingerprint("sha256") in str(info.value)
    assert transport.channels_opened["lvs1"] == 0
    assert all(r.startswith("host unreachable") for r in facts["lvs1"].unknown_facts.values())
    assert "SHA256:" in str(facts["lvs1"].hostname.unknown_reason)
    assert facts["lvs2"].hostname.value == "lvs2"


async def test_host_without_a_machine_is_all_unknown_within_connect_timeout(lab: Lab) -> None:
    # An address in the lab subnet that no host holds: ARP goes unanswered, the connect times out.
    nobody = str(ipaddress.IPv4Network(lab.subnet)[99])
    inventory = inventory_of(lab, {"ghost": nobody})
    timeout = 1.5
    async with SSHTransport(
        inventory, lab.known_hosts_path, lab.client_key_path, connect_timeout=timeout
    ) as transport:
        started = time.monotonic()
        facts = await gather_facts(transport, ["ghost", "web1"])
        elapsed = time.monotonic() - started
    assert elapsed < timeout * 2 + 5  # the connect timeout, not TCP's own minutes
    ghost = facts["ghost"]
    assert len(ghost.unknown_facts) == len(HostFacts.fact_names())
    assert all(r.startswith("host unreachable: ") for r in ghost.unknown_facts.values())
    assert facts["web1"].hostname.value == "web1"


async def test_link_down_host_is_unknown_and_comes_back(session_token: str) -> None:
    async with Lab.up(
        f"f{session_token}", Topology.build(directors=1, real_servers=1, clients=0)
    ) as small:
        timeout = 1.5
        async with SSHTransport(
            inventory_of(small),
            small.known_hosts_path,
            small.client_key_path,
            connect_timeout=timeout,
        ) as transport:
            await small.set_link("web1", False)
            started = time.monotonic()
            facts = await gather_facts(transport, ["lvs1", "web1"])
            elapsed = time.monotonic() - started
            assert elapsed < timeout * 2 + 5  # the connect timeout, not TCP's own minutes
            assert not facts["web1"].hostname.known
            assert "host unreachable" in str(facts["web1"].hostname.unknown_reason)
            assert facts["lvs1"].hostname.value == "lvs1"
            await small.set_link("web1", True)
            # Back once the link is: on a loaded machine the bridge port and the neighbour entry
            # can take a moment after `ip link set up`, so it is asked again until a deadline.
            deadline = time.monotonic() + 30
            while True:
                again = await gather_facts(transport, ["web1"])
                if again["web1"].hostname.known or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert again["web1"].hostname.value == "web1", again["web1"].hostname


async def test_facts_reflect_changes_made_by_hand(lab: Lab, transport: SSHTransport) -> None:
    host = "web3"
    net = ipaddress.IPv4Network(lab.subnet)
    vip, rip = str(net[177]), lab.hosts[host].address
    setup = [
        ["ip", "addr", "add", f"{vip}/32", "dev", "lo"],
        ["sysctl", "-qw", "net.ipv4.conf.lo.arp_announce=2"],
        ["arptables", "-A", "INPUT", "-d", vip, "-j", "DROP"],
        ["arptables", "-A", "OUTPUT", "-s", vip, "-j", "mangle", "--mangle-ip-s", rip],
        ["nft", 'add table ip shoal_facttest { comment "shoal test"; }'],
        ["nft", "add chain ip shoal_facttest pre { type nat hook prerouting priority dstnat; }"],
        ["nft", f"add rule ip shoal_facttest pre ip daddr {vip} tcp dport 80 counter redirect"],
    ]
    undo = [
        ["ip", "addr", "del", f"{vip}/32", "dev", "lo"],
        ["sysctl", "-qw", "net.ipv4.conf.lo.arp_announce=0"],
        ["arptables", "-D", "INPUT", "-d", vip, "-j", "DROP"],
        ["arptables", "-D", "OUTPUT", "-s", vip, "-j", "mangle", "--mangle-ip-s", rip],
        ["nft", "delete table ip shoal_facttest"],
    ]
    before = (await gather_facts(transport, [host]))[host]
    try:
        for argv in setup:
            await lab.exec(host, argv)
        after = (await gather_facts(transport, [host]))[host]
    finally:
        for argv in undo:
            await lab.exec(host, argv, check=False)
        # arptables-nft leaves its (now empty) `arp filter` table behind: that too is ours.
        if before.nft.value is not None and before.nft.value.table("arp", "filter") is None:
            await lab.exec(host, ["nft", "delete table arp filter"], check=False)
    assert after.digest() != before.digest()
    assert after.interfaces.value is not None
    lo = next(i for i in after.interfaces.value if i.name == "lo")
    assert (vip, 32) in {(a.address, a.prefix) for a in lo.addresses}
    assert after.sysctls.value is not None
    assert after.sysctls.value["net.ipv4.conf.lo.arp_announce"] == "2"
    assert after.arptables.value is not None
    specs = {(r.chain, r.spec) for r in after.arptables.value.rules}
    assert ("INPUT", ("-d", vip, "-j", "DROP")) in specs
    assert ("OUTPUT", ("-s", vip, "-j", "mangle", "--mangle-ip-s", rip)) in specs
    assert after.nft.value is not None
    table = after.nft.value.table("ip", "shoal_facttest")
    assert table is not None and table.comment == "shoal test"
    assert vip in table.canonical_json
    restored = (await gather_facts(transport, [host]))[host]
    changed = {
        name for name in HostFacts.model_fields if getattr(restored, name) != getattr(before, name)
    }
    assert not changed, {n: (getattr(before, n), getattr(restored, n)) for n in changed}
    assert restored.digest() == before.digest()


async def test_command_timeout_kills_the_remote_command(lab: Lab, transport: SSHTransport) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        await transport.run("web2", ("sleep", "31.25"), timeout=1)
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while True:
        ps = await lab.exec("web2", ["pgrep", "-f", "sleep 31.25"], check=False)
        if ps.returncode != 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert ps.returncode != 0, f"the remote sleep survived its timeout: {ps.stdout}"
    # The pooled connection is still usable afterwards.
    assert (await transport.run("web2", ("true",))).exit_status == 0


async def test_run_script_fresh_uses_a_new_connection(lab: Lab, transport: SSHTransport) -> None:
    await transport.run("web1", ("true",))
    opened = transport.connections_opened["web1"]
    result = await transport.run_script_fresh("web1", "hostname\n")
    assert result.stdout.strip() == "web1"
    assert transport.connections_opened["web1"] == opened + 1
    # argv is quoted: a metacharacter in an argument is data, not shell code.
    echoed = await transport.run("web1", ("echo", "a; touch /tmp/pwned", "$(id)"), check=True)
    assert echoed.stdout == "a; touch /tmp/pwned $(id)\n"


async def test_shoal_facts_command_prints_json(lab: Lab, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    lab.write_config_repo(REPO / "fixtures" / "config-repo", repo)
    shoal = Path(sys.executable).with_name("shoal")
    proc = await asyncio.create_subprocess_exec(
        str(shoal),
        "facts",
        "web2",
        "--repo",
        str(repo),
        "--json",
        env={**os.environ, "SHOAL_SSH_KEY": str(lab.client_key_path)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    facts = HostFacts.model_validate_json(out)
    assert facts.host == "web2" and facts.hostname.value == "web2"
    assert facts.interfaces.value is not None
    eth0 = next(i for i in facts.interfaces.value if i.name == "eth0")
    assert lab.hosts["web2"].address in {a.address for a in eth0.addresses}
