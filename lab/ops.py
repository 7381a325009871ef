"""Plain synchronous lab operations for the command line: up, down, status."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from lab import proc
from lab.lab import Lab
from lab.state import all_lab_ids, load_state
from lab.teardown import TeardownReport, destroy_lab, lab_netns
from lab.topology import HostKind, Topology


@dataclass(frozen=True)
class UpResult:
    lab: Lab
    seconds: float


@dataclass(frozen=True)
class DownResult:
    report: TeardownReport
    seconds: float


@dataclass(frozen=True)
class HostStatus:
    name: str
    role: str
    address: str
    init_pid: int
    sshd_pid: int
    running: bool  # the host's init is alive and still carries the lab's marker
    sshd_running: bool
    reachable: bool  # sshd answered with its SSH banner over the bridge


@dataclass(frozen=True)
class LabStatus:
    lab_id: str
    exists: bool
    status: str
    subnet: str
    bridge: str
    known_hosts: str
    client_key: str
    hosts: list[HostStatus]
    leftovers: list[str]  # namespaces found without a state file (a crashed run)


def up_lab(
    lab_id: str,
    real_servers: int = 3,
    *,
    sshd_debug: bool = False,
    director_kind: HostKind = "netns",
) -> UpResult:
    """Bring a lab up; `director_kind="vm"` boots its directors as VMs (lab/vm.py: real IPVS).

    A VM keeps running after this process exits (qemu is in its own session and carries the
    lab's marker), so `down_lab` or `Lab.down` removes it like any other host.
    """
    start = time.monotonic()
    topology = Topology.build(real_servers=real_servers, director_kind=director_kind)
    lab = asyncio.run(Lab.create(lab_id, topology, sshd_debug=sshd_debug))
    return UpResult(lab, time.monotonic() - start)


def down_lab(lab_id: str) -> DownResult:
    start = time.monotonic()
    report = asyncio.run(destroy_lab(lab_id))
    return DownResult(report, time.monotonic() - start)


async def _banner(address: str, timeout: float) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, 22), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.startswith(b"SSH-")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def _status(lab_id: str, timeout: float) -> LabStatus:
    state = load_state(lab_id)
    if state is None:
        leftovers = sorted(lab_netns(lab_id))
        return LabStatus(lab_id, False, "absent", "", "", "", "", [], leftovers)
    lab = Lab(state)
    reach = await asyncio.gather(*(_banner(h.address, timeout) for h in state.hosts))
    hosts = [
        HostStatus(
            name=h.name,
            role=h.role,
            address=h.address,
            init_pid=h.init_pid,
            sshd_pid=h.sshd_pid,
            running=proc.read_marker(h.main_pid()) == f"{lab_id}/{h.name}",
            # sshd rewrites its environment area for its process title, so it is known by
            # sitting in the host's pid namespace instead of by the marker. A VM's sshd runs
            # in the guest: only its answer (`reachable`) tells.
            sshd_running=ok
            if h.kind == "vm"
            else proc.is_alive(h.sshd_pid)
            and proc.ns_inode(h.sshd_pid, "pid") == h.namespaces.get("pid"),
            reachable=ok,
        )
        for h, ok in zip(state.hosts, reach, strict=True)
    ]
    return LabStatus(
        lab_id,
        True,
        state.status,
        state.subnet,
        state.bridge,
        str(lab.known_hosts_path),
        str(lab.client_key_path),
        hosts,
        [],
    )


def lab_status(lab_id: str, timeout: float = 1.0) -> LabStatus:
    return asyncio.run(_status(lab_id, timeout))


def lab_ids() -> list[str]:
    return all_lab_ids()
