"""Fault injection: make one command fail or hang on one lab host only.

A small script is bind-mounted over the command's path inside that host's mount namespace (the
namespace is a slave, so the mount never reaches the machine or other hosts). Clearing finds
the injected mounts in the host's own mount table, so it works from any process.

On a VM host the same is done inside the guest over SSH: the script is written to the guest's
own /run and bind-mounted there (the guest sees the machine's files read-only and cached).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shlex
import signal
from typing import TYPE_CHECKING

from lab import proc

if TYPE_CHECKING:
    from lab.lab import Lab

HANG_NAME = "shoal-injected-hang"
_SCRIPT_RE = re.compile(r"/inject/shoal-lab-inject-\d+\.sh$")
VM_INJECT_DIR = "/run/shoal-lab/inject"

# Run in a VM guest: write the script (stdin) to a fresh numbered file, bind-mount it over $2.
_VM_INJECT = """set -e
mkdir -p "$1"; n=1
while [ -e "$1/shoal-lab-inject-$n.sh" ]; do n=$((n + 1)); done
cat >"$1/shoal-lab-inject-$n.sh"; chmod 0755 "$1/shoal-lab-inject-$n.sh"
mount --bind "$1/shoal-lab-inject-$n.sh" "$2"
"""
# Run in a VM guest: the pids whose argv[0] is the hang script's name ($1).
_VM_HUNG = """for d in /proc/[0-9]*; do
  a=$(tr '\\0' '\\n' <"$d/cmdline" 2>/dev/null | head -n 1)
  [ "$a" = "$1" ] && echo "${d#/proc/}"
done; exit 0
"""


def _script(path: str, exit_code: int, hang: bool) -> str:
    if hang:
        # exec -a names the process, so clear_injections can find and stop hung calls.
        return f"#!/bin/bash\n# shoal lab: {path} hangs\nexec -a {HANG_NAME} sleep infinity\n"
    message = shlex.quote(f"shoal lab: injected failure of {path}")
    return f"#!/bin/sh\necho {message} >&2\nexit {exit_code}\n"


async def inject_failing_command(
    lab: Lab, host: str, path: str, *, exit_code: int = 1, hang: bool = False
) -> None:
    if not 0 <= exit_code <= 255:
        raise ValueError("exit_code must be 0..255")
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is not an absolute path")
    if lab.host(host).kind == "vm":
        argv = ["sh", "-c", _VM_INJECT, "sh", VM_INJECT_DIR, path]
        await lab.exec(host, argv, input=_script(path, exit_code, hang))
        return
    directory = lab.host_dir(host) / "inject"
    directory.mkdir(exist_ok=True)
    for n in itertools.count(1):
        script = directory / f"shoal-lab-inject-{n}.sh"
        if not script.exists():
            break
    script.write_text(_script(path, exit_code, hang))
    script.chmod(0o755)
    await lab.exec(host, ["mount", "--bind", str(script), path])


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _injected(mountinfo: str) -> list[str]:
    rows = [line.split() for line in mountinfo.splitlines()]
    points = [_unescape(r[4]) for r in rows if _SCRIPT_RE.search(_unescape(r[3]))]
    return list(reversed(points))


def injected_mounts(lab: Lab, host: str) -> list[str]:
    """Mount points (as the host sees them) that carry an injected script, latest first."""
    with open(f"/proc/{lab.host(host).init_pid}/mountinfo") as f:
        return _injected(f.read())


async def clear_injections(lab: Lab, host: str) -> None:
    if lab.host(host).kind == "vm":
        await _clear_vm_injections(lab, host)
        return
    for point in injected_mounts(lab, host):
        await lab.exec(host, ["umount", point])
    # Calls that hung on an injected script would otherwise sleep until the lab goes down.
    pid_ns = proc.ns_inode(lab.host(host).init_pid, "pid")
    for pid in proc.all_pids():
        if pid_ns is None or proc.ns_inode(pid, "pid") != pid_ns:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0]
        except OSError:
            continue
        if argv0 == HANG_NAME.encode():
            # In this host's pid namespace and named by us: verified as the lab's own.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _clear_vm_injections(lab: Lab, host: str) -> None:
    mountinfo = (await lab.exec(host, ["cat", "/proc/self/mountinfo"])).stdout
    for point in _injected(mountinfo):
        await lab.exec(host, ["umount", point])
    # The guest is the lab's own machine: its hung calls are ours, found by the name we gave.
    hung = (await lab.exec(host, ["sh", "-c", _VM_HUNG, "sh", HANG_NAME])).stdout.split()
    if hung:
        await lab.exec(host, ["kill", "-KILL", *hung], check=False)
