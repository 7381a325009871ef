"""The lab itself: real hosts reached over real SSH, isolated from each other, and removable.

The session lab (6 hosts) is used read-mostly: every change a test makes is undone. Tests that
take hosts down or crash a lab bring up their own small labs next to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from lab import Lab, Topology
from lab.naming import STATE_ROOT
from lab.proc import all_pids, is_alive, ns_inode, read_marker
from lab.state import process_start_time
from lab.teardown import lab_netns

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

REPO = Path(__file__).resolve().parents[2]
FIVE = Topology.build(directors=1, real_servers=3, clients=1)


@contextlib.asynccontextmanager
async def connect(
    lab: Lab, host: str, *, known_hosts: str | None = None, timeout: float = 10
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """Strict host key checking against the lab's known_hosts, the lab's client key only."""
    async with asyncssh.connect(
        lab.hosts[host].address,
        username="root",
        client_keys=[str(lab.client_key_path)],
        known_hosts=known_hosts or str(lab.known_hosts_path),
        connect_timeout=timeout,
    ) as conn:
        yield conn


async def ssh_run(lab: Lab, host: str, command: str) -> str:
    async with connect(lab, host) as conn:
        result = await conn.run(command, check=True)
    return str(result.stdout)


def link_names() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True)
    return {link["ifname"] for link in json.loads(out.stdout)}


def lab_traces(lab_id: str) -> list[str]:
    """Everything of `lab_id` on the machine now: namespaces, links, marked processes, state."""
    traces = [f"netns {n}" for n in lab_netns(lab_id)]
    traces += [
        f"link {n}" for n in link_names() if n == f"shoal-{lab_id}" or n.startswith(f"sh-{lab_id}-")
    ]
    traces += [
        f"process {pid}"
        for pid in all_pids()
        if is_alive(pid) and (read_marker(pid) or "").startswith(f"{lab_id}/")
    ]
    if (STATE_ROOT / lab_id).exists():
        traces.append(f"state dir {STATE_ROOT / lab_id}")
    return traces


Identity = tuple[int, str]


def identity(pid: int) -> Identity:
    """A pid with its start time: still names the same process if the pid is reused later."""
    return pid, process_start_time(pid)


def running(who: Identity) -> bool:
    return is_alive(who[0]) and process_start_time(who[0]) == who[1]


def host_processes(lab: Lab) -> list[Identity]:
    """Every process in the lab's hosts (also those sshd started), while they run."""
    namespaces = {ns_inode(h.init_pid, "pid") for h in lab.hosts.values()}
    return [identity(p) for p in all_pids() if is_alive(p) and ns_inode(p, "pid") in namespaces]


async def test_every_host_answers_over_ssh_with_its_pinned_key(lab: Lab) -> None:
    assert len(lab.hosts) >= 5
    for name in lab.hosts:
        out = await ssh_run(lab, name, "hostname; cat /etc/hostname; ip -4 -o addr show dev eth0")
        hostname, etc_hostname, addr_line = out.splitlines()
        assert hostname == etc_hostname == name
        assert f"{lab.hosts[name].address}/24" in addr_line

    # Nothing is routed out of the lab: hosts have no default route, the bridge forwards nothing
    # off itself and has only the controller's address.
    for name in lab.hosts:
        assert (await lab.exec(name, ["ip", "-4", "route", "show", "default"])).stdout == ""
    assert Path(f"/proc/sys/net/ipv4/conf/{lab.bridge}/forwarding").read_text().strip() == "0"
    bridge = subprocess.run(
        ["ip", "-j", "addr", "show", "dev", lab.bridge], capture_output=True, text=True, check=True
    )
    addrs = [a["local"] for a in json.loads(bridge.stdout)[0]["addr_info"]]
    assert addrs == [lab.controller_address]


async def test_root_login_needs_the_key(lab: Lab) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        async with asyncssh.connect(
            lab.hosts["web1"].address,
            username="root",
            client_keys=None,
            password="root",
            known_hosts=str(lab.known_hosts_path),
            connect_timeout=10,
        ):
            pass


async def test_a_wrong_host_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    # web1's address pinned to lvs1's (real, but wrong) key.
    by_name = {
        line.split()[3]: line.split() for line in lab.known_hosts_path.read_text().splitlines()
    }
    assert by_name["web1"][0] == lab.hosts["web1"].address
    lvs1_key = " ".join(by_name["lvs1"][1:3])
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{lab.hosts['web1'].address} {lvs1_key}\n")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with connect(lab, "web1", known_hosts=str(wrong)):
            pass
    # And a host missing from known_hosts is refused as well.
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with connect(lab, "web1", known_hosts=str(empty)):
            pass


async def test_hosts_have_their_own_files_addresses_sysctls_and_rules(lab: Lab) -> None:
    one, others = "web1", [n for n in lab.hosts if n != "web1"]
    probe = "/etc/shoal-lab-isolation-probe"
    vip = lab.subnet.rsplit(".", 1)[0] + ".177"
    sysctl = "net.ipv4.conf.all.arp_ignore"

    async def sysctl_value(host: str) -> str:
        return (await lab.exec(host, ["sysctl", "-n", sysctl])).stdout.strip()

    before = {h: await sysctl_value(h) for h in lab.hosts}
    machine_before = Path("/proc/sys/net/ipv4/conf/all/arp_ignore").read_text().strip()
    new_value = "2" if before[one] != "2" else "1"
    try:
        # Made over SSH on web1, as the reconciler will.
        await ssh_run(
            lab,
            one,
            f"echo isolated > {probe} && ip addr add {vip}/32 dev lo && "
            f"sysctl -q -w {sysctl}={new_value} && "
            f"arptables -A INPUT -d {vip} -j DROP",
        )
        assert (await lab.exec(one, ["cat", probe])).stdout == "isolated\n"
        assert vip in (await lab.exec(one, ["ip", "-4", "addr", "show", "dev", "lo"])).stdout
        assert await sysctl_value(one) == new_value
        assert vip in (await lab.exec(one, ["arptables", "-L", "-n"])).stdout

        for host in others:
            assert (await lab.exec(host, ["test", "-e", probe], check=False)).returncode == 1
            assert vip not in (await lab.exec(host, ["ip", "-4", "addr", "show"])).stdout
            assert await sysctl_value(host) == before[host]
            assert vip not in (await lab.exec(host, ["arptables", "-L", "-n"])).stdout
        # Nor on the machine itself (read-only checks).
        assert not Path(probe).exists()
        assert Path("/proc/sys/net/ipv4/conf/all/arp_ignore").read_text().strip() == machine_before
        root_addrs = subprocess.run(
            ["ip", "-4", "addr", "show"], capture_output=True, text=True, check=True
        ).stdout
        assert vip not in root_addrs
    finally:
        await lab.exec(
            one,
            [
                "sh",
                "-c",
                f"rm -f {probe}; ip addr del {vip}/32 dev lo; "
                f"sysctl -q -w {sysctl}={before[one]}; arptables -D INPUT -d {vip} -j DROP",
            ],
            check=False,
        )
    assert vip not in (await lab.exec(one, ["arptables", "-L", "-n"])).stdout


async def test_hosts_have_their_own_processes_and_tmp(lab: Lab) -> None:
    # Each host is its own pid namespace: PID 1 is its init, other hosts' sshd are invisible.
    for host in ("lvs1", "web2"):
        ps = (await lab.exec(host, ["ps", "-e", "-o", "pid=,comm="])).stdout.split("\n")
        pids = {line.split()[0]: line.split()[1] for line in ps if line.strip()}
        assert pids["1"] == "bash"
        assert sum(1 for comm in pids.values() if comm == "sshd") == 1
    await lab.exec("web2", ["sh", "-c", "echo x > /tmp/shoal-tmp-probe"])
    try:
        assert (
            await lab.exec("web3", ["test", "-e", "/tmp/shoal-tmp-probe"], check=False)
        ).returncode
        assert not Path("/tmp/shoal-tmp-probe").exists()
    finally:
        await lab.exec("web2", ["rm", "-f", "/tmp/shoal-tmp-probe"])


async def test_sshd_logs_connections_per_host(lab: Lab) -> None:
    log = lab.sshd_log_path("web3")
    before = log.read_text().count("Connection from")
    for _ in range(2):
        await ssh_run(lab, "web3", "true")
    assert log.read_text().count("Connection from") == before + 2
    assert "Accepted publickey for root" in log.read_text()


async def test_set_link_cuts_and_restores_ssh(lab: Lab) -> None:
    await ssh_run(lab, "web3", "true")
    await lab.set_link("web3", False)
    try:
        with pytest.raises((OSError, asyncssh.Error, TimeoutError)):
            async with connect(lab, "web3", timeout=2):
                pass
        # Only web3 is cut off.
        assert (await ssh_run(lab, "web2", "hostname")).strip() == "web2"
    finally:
        await lab.set_link("web3", True)
    assert (await ssh_run(lab, "web3", "hostname")).strip() == "web3"


async def test_injected_failures_stay_on_one_host(lab: Lab) -> None:
    await lab.inject_failing_command("web2", "/usr/sbin/arptables", exit_code=3)
    try:
        async with connect(lab, "web2") as conn:
            failed = await conn.run("arptables -L -n")
        assert failed.exit_status == 3
        assert "injected failure" in str(failed.stderr)
        assert (await lab.exec("web3", ["arptables", "-L", "-n"])).returncode == 0
        assert subprocess.run(["test", "-x", "/usr/sbin/arptables"], check=False).returncode == 0
    finally:
        await lab.clear_injections("web2")
    assert (await lab.exec("web2", ["arptables", "-L", "-n"])).returncode == 0

    await lab.inject_failing_command("web2", "/usr/sbin/ip", hang=True)
    try:
        with pytest.raises(TimeoutError):
            await lab.exec("web2", ["ip", "-br", "link"], timeout=1)
        assert (await lab.exec("web1", ["ip", "-br", "link"])).returncode == 0
    finally:
        await lab.clear_injections("web2")
    assert "eth0" in (await lab.exec("web2", ["ip", "-br", "link"])).stdout
    hung = await lab.exec("web2", ["pgrep", "-f", "shoal-injected-hang"], check=False)
    assert hung.stdout == ""


async def test_config_repo_gets_this_labs_hosts_and_keys(lab: Lab, tmp_path: Path) -> None:
    from reconciler.desired.loader import load_repository

    dest = tmp_path / "repo"
    lab.write_config_repo(REPO / "fixtures" / "config-repo", dest)
    desired = load_repository(dest)
    assert {n: h.address for n, h in desired.inventory.hosts.items()} == {
        n: h.address for n, h in lab.hosts.items()
    }
    assert {n: h.ipv6 for n, h in desired.inventory.hosts.items()} == {
        n: h.address6 for n, h in lab.hosts.items()
    }
    assert desired.known_hosts == lab.known_hosts_path.read_text()
    prefix = lab.subnet.rsplit(".", 1)[0] + "."
    for cluster in desired.clusters.values():
        for service in cluster.services:
            assert service.vip.startswith(prefix)


async def test_down_leaves_nothing_and_other_labs_keep_running(
    lab: Lab, session_token: str
) -> None:
    lab_id = f"d{session_token}"
    async with Lab.up(lab_id, FIVE, ephemeral=True) as small:
        assert len(small.hosts) == 5
        for name in small.hosts:
            assert (await ssh_run(small, name, "hostname")).strip() == name
        # A daemon started over SSH (not by the lab, so without its marker) must go too.
        await ssh_run(small, "web1", "setsid -f sleep 10000 >/dev/null 2>&1 < /dev/null")
        inside = host_processes(small)
        sshd = [identity(h.sshd_pid) for h in small.hosts.values()]
        holders = [identity(h.holder_pid) for h in small.hosts.values()]
        assert set(sshd) <= set(inside)
        assert len(inside) >= 2 * 5 + 1  # at least init and sshd per host, and the daemon
        assert all(running(p) for p in inside + holders)
        assert len(lab_traces(lab_id)) > 10
    assert lab_traces(lab_id) == []
    assert not [p for p in inside + holders if running(p)]
    # The session lab was untouched.
    assert (await ssh_run(lab, "lvs1", "hostname")).strip() == "lvs1"


async def test_a_crashed_lab_is_cleaned_by_the_next_up(session_token: str) -> None:
    lab_id = f"c{session_token}"
    two = Topology.build(directors=1, real_servers=1, clients=0)
    crash = (
        "import asyncio, os, signal\n"
        "from lab import Lab, Topology\n"
        f"asyncio.run(Lab.create({lab_id!r}, Topology.build(1, 1, 0), ephemeral=True))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", crash, cwd=str(REPO), stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    old = Lab.attach(lab_id)
    old_processes = host_processes(old)
    assert len(old_processes) >= 2 * 2, old_processes  # at least init and sshd per host
    old_traces = lab_traces(lab_id)
    assert f"netns shoal-{lab_id}-lvs1" in old_traces, old_traces
    assert f"link shoal-{lab_id}" in old_traces, old_traces
    # The record is lost too: leftovers must be found by their names and markers alone.
    (STATE_ROOT / lab_id / "state.json").unlink()

    async with Lab.up(lab_id, two) as fresh:
        assert not [p for p in old_processes if running(p)], old_processes
        for name in fresh.hosts:
            assert (await ssh_run(fresh, name, "hostname")).strip() == name
        new_processes = host_processes(fresh)
    assert lab_traces(lab_id) == []
    assert not [p for p in new_processes if running(p)]


async def test_a_big_lab_comes_up_fast(lab: Lab, session_token: str) -> None:
    lab_id = f"b{session_token}"
    topology = Topology.with_real_servers(50)
    start = time.monotonic()
    async with Lab.up(lab_id, topology, ephemeral=True) as big:
        up_seconds = time.monotonic() - start
        assert len(big.hosts) == 53
        assert (await ssh_run(big, "web50", "hostname")).strip() == "web50"
        # Subnets of coexisting labs never clash.
        assert big.subnet != lab.subnet
        down_start = time.monotonic()
        report = await big.down()
        down_seconds = time.monotonic() - down_start
    # The target is 0.5 s per host on an idle machine (about 0.03 s is typical); the bounds
    # here leave room for other work on the machine and still catch a serial or stuck start.
    assert up_seconds < 1.0 * len(topology.hosts), up_seconds
    assert report.left == []
    assert down_seconds < 60, report.seconds
    assert lab_traces(lab_id) == []
