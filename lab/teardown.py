"""Removing a lab, or what a crashed run left of it: processes, namespaces, links, state dir.

Works from what is on the machine, not only from the state file: namespaces named
`shoal-<id>-*`, links named `shoal-<id>` / `sh-<id>-N`, and processes that carry the lab's
marker or live in one of its namespaces. Each process is re-checked right before it is killed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import network, proc
from lab.naming import check_lab_id, lab_dir, netns_prefix
from lab.state import load_state

NETNS_DIR = Path("/run/netns")


@dataclass
class TeardownReport:
    lab_id: str
    killed: list[int] = field(default_factory=list)
    netns_removed: list[str] = field(default_factory=list)
    links_removed: list[str] = field(default_factory=list)
    state_dir_removed: bool = False
    left: list[str] = field(default_factory=list)  # anything that could not be removed
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, to see what is slow

    @property
    def found_anything(self) -> bool:
        return bool(self.killed or self.netns_removed or self.links_removed)


def lab_netns(lab_id: str) -> dict[str, int]:
    """Named network namespaces of the lab -> namespace inode (0 if the file is not bound)."""
    if not NETNS_DIR.is_dir():
        return {}
    nsfs_dev = os.stat("/proc/self/ns/net").st_dev
    found = {}
    for entry in NETNS_DIR.iterdir():
        if entry.name.startswith(netns_prefix(lab_id)):
            try:
                st = os.stat(entry)
            except OSError:
                found[entry.name] = 0
                continue
            found[entry.name] = st.st_ino if st.st_dev == nsfs_dev else 0
    return found


def lab_processes(lab_id: str, extra_namespaces: set[int]) -> dict[int, proc.ProcInfo]:
    """Running processes that belong to the lab: its marker, or inside one of its namespaces."""
    mine = proc.own_namespaces()
    infos = [i for p in proc.all_pids() if (i := proc.proc_info(p)) is not None]
    prefix = f"{lab_id}/"
    namespaces = set(extra_namespaces)
    for info in infos:
        if info.marker is not None and info.marker.startswith(prefix):
            namespaces.update(info.namespaces.values())
    namespaces -= mine
    me = os.getpid()
    found = {}
    for info in infos:
        if info.pid == me or info.state == "Z":
            continue
        marked = info.marker is not None and info.marker.startswith(prefix)
        if marked or namespaces.intersection(info.namespaces.values()):
            found[info.pid] = info
    return found


async def destroy_lab(lab_id: str, *, timeout: float = 10.0) -> TeardownReport:
    """Remove everything of lab `lab_id` that exists; safe to call when nothing does."""
    check_lab_id(lab_id)
    report = TeardownReport(lab_id)
    clock = time.monotonic()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        report.seconds[name] = round(now - clock, 3)
        clock = now

    named = lab_netns(lab_id)
    namespaces = {ino for ino in named.values() if ino}
    try:
        state = load_state(lab_id)
    except ValueError:
        state = None  # a half-written or foreign file: the scan below still finds everything
    if state is not None:
        for h in state.hosts:
            # Only trust a recorded pid whose environment still says it is this host.
            if h.init_pid and proc.read_marker(h.init_pid) == f"{lab_id}/{h.name}":
                namespaces.update(h.namespaces.values())

    procs = lab_processes(lab_id, namespaces)
    # Killing a host's init alone would end its pid namespace, but processes entered into only
    # some of its namespaces (nsenter -m, -n) would survive: every one is killed. Those inside
    # the hosts go first, so each `unshare` sees its init die and exits by itself (killed
    # first, it would leave the init to the machine's PID 1 to reap).
    own = proc.own_namespaces()
    inside = [p for p, i in procs.items() if i.namespaces.get("pid") not in own]
    outside = [p for p in procs if p not in inside]
    report.killed = proc.kill_verified(inside, procs)
    left = await asyncio.to_thread(proc.wait_gone, inside, timeout)
    report.killed += proc.kill_verified(outside, procs)
    left += await asyncio.to_thread(proc.wait_gone, outside, timeout)
    report.left += [f"process {p} ({procs[p].comm})" for p in left]
    stage("processes")

    if named:
        batch = "".join(f"netns del {name}\n" for name in named)
        await proc.run(["ip", "-force", "-batch", "-"], input=batch, check=False)
        still = lab_netns(lab_id)
        report.netns_removed = [n for n in named if n not in still]
        report.left += [f"netns {n}" for n in still]
    stage("netns")

    # A namespace can outlive its last process for a while (sockets closing), keeping its veth:
    # delete each one from the bridge side, and wait until the machine agrees.
    links = await network.lab_links(lab_id)
    report.links_removed = list(links)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while links:
        await network.delete_links(links)
        links = await network.lab_links(lab_id)
        if not links or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    report.links_removed = [n for n in report.links_removed if n not in links]
    report.left += [f"link {n}" for n in links]
    stage("links")

    directory = lab_dir(lab_id)
    if directory.exists() and not left:
        # The overlays' upper dirs live here: removed only once no host mount namespace
        # (whose processes were all just killed) can still have them mounted.
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        report.state_dir_removed = not directory.exists()
        if not report.state_dir_removed:
            report.left.append(f"directory {directory}")
    stage("state dir")
    return report
