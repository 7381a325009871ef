"""Running one measured command: wall time and the CPU time of the whole process tree.

`os.wait4` gives the rusage of the child and every descendant it waited for, so a tool's worker
processes count. Processes that detach (Ansible's ssh ControlPersist masters) are not waited
for by anyone we know: `detached_cpu` reads their CPU time from /proc before they are ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Measured:
    wall: float
    cpu: float  # user + system seconds of the process tree
    returncode: int
    output: str


def run_measured(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log: Path,
) -> Measured:
    """Run argv to completion (stdout+stderr into `log`), timed."""
    with log.open("w") as out:
        start = time.perf_counter()
        p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)  # fmt: skip
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - start
    p.returncode = os.waitstatus_to_exitcode(status)
    return Measured(wall, usage.ru_utime + usage.ru_stime, p.returncode, log.read_text())


def proc_cpu_seconds(stat_line: str) -> float:
    """utime + stime (seconds) from a /proc/PID/stat line (pure)."""
    # The command name is in parentheses and may hold spaces: fields start after the last ')'.
    fields = stat_line[stat_line.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def pids_with_arg(marker: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            out.append(int(entry))
    return out


def detached_cpu(marker: str, *, end: bool) -> float:
    """CPU seconds of the running processes whose command line holds `marker`; end them if asked.

    The marker is a path unique to one measured run, so only processes that run started match.
    """
    total = 0.0
    pids = [p for p in pids_with_arg(marker) if p != os.getpid()]
    for pid in pids:
        try:
            total += proc_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
    if end:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    return total
