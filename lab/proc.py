"""Local processes for the lab: running commands, and reading /proc to find the lab's own.

A process belongs to a lab when its environment carries the lab's marker (everything the lab
starts does) or when it lives in one of the lab's namespaces (anything started inside a host,
e.g. by sshd). Only such processes are ever signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from lab.naming import MARKER_ENV

NS_KINDS = ("net", "pid", "mnt", "uts")
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


class LabCommandError(subprocess.CalledProcessError):
    """A lab command failed; the message carries its stderr (CalledProcessError's does not)."""

    def __str__(self) -> str:
        err = self.stderr.strip() if isinstance(self.stderr, str) else ""
        return f"{super().__str__()}{': ' + err if err else ''}"


async def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = 60.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv on the machine, capture text output; kill it when `timeout` runs out."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else {**BASE_ENV},
        cwd="/",
        # Its own process group, so a timeout kills what it started too (nsenter's child in a
        # host, a hung command), not only the process we know: those hold our pipes open.
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(input.encode() if input is not None else None), timeout
        )
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
        raise
    assert proc.returncode is not None
    result = subprocess.CompletedProcess(
        list(argv), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
    )
    if check and result.returncode != 0:
        raise LabCommandError(result.returncode, list(argv), result.stdout, result.stderr)
    return result


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    ppid: int
    state: str
    comm: str
    marker: str | None
    namespaces: Mapping[str, int]


def _read_stat(pid: int) -> tuple[str, int, str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # comm may contain spaces and parentheses: it ends at the last ')'.
    close = raw.rfind(")")
    comm = raw[raw.find("(") + 1 : close]
    fields = raw[close + 2 :].split()
    return fields[0], int(fields[1]), comm


def read_marker(pid: int) -> str | None:
    """The lab marker in a process's environment, or None (also for zombies and the gone)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    prefix = f"{MARKER_ENV}=".encode()
    for item in env.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def ns_inode(pid: int | str, kind: str) -> int | None:
    try:
        link = os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None
    # e.g. "net:[4026532281]"
    return int(link[link.index("[") + 1 : -1])


def proc_info(pid: int) -> ProcInfo | None:
    stat = _read_stat(pid)
    if stat is None:
        return None
    state, ppid, comm = stat
    namespaces = {k: ino for k in NS_KINDS if (ino := ns_inode(pid, k)) is not None}
    return ProcInfo(pid, ppid, state, comm, read_marker(pid), namespaces)


def all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def is_alive(pid: int) -> bool:
    """Running (a zombie has already released its namespaces, so it counts as gone)."""
    stat = _read_stat(pid)
    return stat is not None and stat[0] != "Z"


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def own_namespaces() -> set[int]:
    """This process's and PID 1's namespaces: never treated as a lab's, whatever a file says."""
    return {ino for pid in ("self", 1) for k in NS_KINDS if (ino := ns_inode(pid, k)) is not None}


def kill_verified(pids: Sequence[int], belongs: dict[int, ProcInfo]) -> list[int]:
    """SIGKILL each pid whose current /proc entry still matches what made it the lab's."""
    killed = []
    for pid in pids:
        before = belongs.get(pid)
        now = proc_info(pid)
        if before is None or now is None or now.state == "Z":
            continue
        # Same process (not a reused pid): same command and same namespaces as when scanned.
        if now.comm != before.comm or dict(now.namespaces) != dict(before.namespaces):
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until no pid is running; return those still running at the deadline."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if is_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if is_alive(p)]
    return left
