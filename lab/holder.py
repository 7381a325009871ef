"""Starting one lab host: `unshare` runs host-init.sh as the PID 1 of fresh namespaces.

The holder (`unshare`) stays in the machine's pid namespace as the parent of the host's init; the
init is what `nsenter` targets. Setup is a short conversation over the init's stdin/stdout (see
host-init.sh), so nothing is run against a namespace before it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lab import proc
from lab.naming import MARKER_ENV, marker_value

OVERLAID = ("etc", "var-lib", "run", "var-log", "root", "usr-local")


class HostStartError(RuntimeError):
    pass


def init_script() -> Path:
    return Path(str(resources.files("lab").joinpath("host-init.sh")))


def prepare_host_dir(host_dir: Path) -> None:
    """Upper and work dirs for every overlay: made now, while nothing is mounted on them."""
    for key in OVERLAID:
        (host_dir / "overlay" / key / "upper").mkdir(parents=True, exist_ok=True)
        (host_dir / "overlay" / key / "work").mkdir(parents=True, exist_ok=True)


@dataclass
class Holder:
    name: str
    host_dir: Path
    process: asyncio.subprocess.Process
    init_pid: int = 0

    def init_log(self) -> str:
        try:
            return (self.host_dir / "init.log").read_text()[-2000:]
        except OSError:
            return ""

    async def expect(self, word: str, timeout: float) -> None:
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            raise HostStartError(
                f"{self.name}: no {word!r} in {timeout}s: {self.init_log()}"
            ) from None
        if line.decode().strip() != word:
            raise HostStartError(
                f"{self.name}: init said {line!r}, not {word!r}: {self.init_log()}"
            )

    async def send(self, word: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{word}\n".encode())
        await self.process.stdin.drain()


async def start_holder(
    lab_id: str, name: str, host_dir: Path, lab_dir: Path, address_cidr: str, address6_cidr: str
) -> Holder:
    """Start the host and return once its private filesystem is mounted ("ready")."""
    env = {
        **proc.BASE_ENV,
        MARKER_ENV: marker_value(lab_id, name),
        "LAB_HOSTNAME": name,
        "LAB_HOST_DIR": str(host_dir),
        "LAB_SHARED_DIR": str(lab_dir),
        "LAB_ADDRESS": address_cidr,
        "LAB_ADDRESS6": address6_cidr,
    }
    argv = [
        "unshare",
        "--net",
        "--uts",
        "--mount",
        "--pid",
        "--fork",
        "--mount-proc",
        # Slave, not private: when the machine unmounts something (a deleted netns), the
        # host's copy goes too instead of keeping it alive.
        "--propagation",
        "slave",
        "--",
        "/bin/bash",
        str(init_script()),
    ]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd="/",
        # Its own session: a Ctrl-C at the terminal that ran `python -m lab up` does not reach it.
        start_new_session=True,
    )
    holder = Holder(name, host_dir, process)
    await holder.expect("ready", 30)
    kids = proc.children(process.pid)
    if len(kids) != 1:
        raise HostStartError(f"{name}: unshare has children {kids}, expected the host's init")
    holder.init_pid = kids[0]
    return holder


def tcp_listening(pid: int, port: int) -> bool:
    """Whether anything listens on `port` in the network namespace of `pid` (IPv4 or IPv6).

    Read from /proc instead of connecting, so readiness checks leave no line in sshd's log.
    """
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[1].rsplit(":", 1)[1] == f"{port:04X}" and fields[3] == "0A":
                return True
    return False


def _ns_pid(pid: int) -> int | None:
    """A process's pid inside its own (innermost) pid namespace."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        pass
    return None


def _sshd_pid(init_pid: int) -> int | None:
    """The root-namespace pid of the daemon named in the host's /run/sshd.pid, once written.

    The pid file (written after sshd listens) tells the daemon from its parent that is still
    exiting; it holds the host's own pid number, which NSpid maps back.
    """
    try:
        inner = int(Path(f"/proc/{init_pid}/root/run/sshd.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    for p in proc.children(init_pid):
        info = proc.proc_info(p)
        if info is not None and info.comm == "sshd" and _ns_pid(p) == inner:
            return p
    return None


async def wait_sshd(holder: Holder, timeout: float) -> int:
    """The root-namespace pid of the host's sshd, once it listens."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        pid = _sshd_pid(holder.init_pid)
        if pid is not None and tcp_listening(holder.init_pid, 22):
            return pid
        if loop.time() > deadline:
            log = ""
            with contextlib.suppress(OSError):
                log = (holder.host_dir / "sshd.log").read_text()[-2000:]
            raise HostStartError(f"{holder.name}: sshd not listening after {timeout}s: {log}")
        if holder.process.returncode is not None or not os.path.exists(f"/proc/{holder.init_pid}"):
            raise HostStartError(f"{holder.name}: the host's init exited: {holder.init_log()}")
        await asyncio.sleep(0.01)
