"""What the test session leaves on the machine outside its labs, found by comparing two snapshots.

A test may change lab hosts (their /etc, /var/lib, /run are overlays private to them) but never
the machine: no /var/lib/shoal, no shoal file under /etc, /run, /usr/local or /root, no network
namespace, link or mount of this session's labs, no process this session started still alive.
The snapshot is taken when the session starts and again when it ends; whatever the second has
that the first had not is a leftover, and fails the session (tests/conftest.py).

Lab objects are recognised by the session token that every test lab's id ends with, so
another pytest process running beside this one (with its own labs) is not blamed on it.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab.naming import STATE_ROOT

# Where shoal (or a lab gone wrong) could write on the machine itself.
WATCHED_TREES = ("/etc", "/var/lib", "/run", "/usr/local", "/root", "/var/log", "/srv", "/opt")
# Deep enough for /etc/systemd/system/shoal-restore.service and /var/lib/shoal/backups/<id>.
WATCH_DEPTH = 4
# Paths that name one lab: counted only when the lab is this session's.
LAB_NAMED = re.compile(r"^/run/netns/")
# Set in every process this session starts, so one still alive at the end can be found.
SESSION_ENV = "SHOAL_TEST_SESSION"


@dataclass(frozen=True)
class Snapshot:
    paths: frozenset[str]
    links: frozenset[str]
    netns: frozenset[str]
    mounts: frozenset[str]
    processes: frozenset[str]


def _shoal_paths(roots: tuple[str, ...], token: str) -> frozenset[str]:
    found: set[str] = set()
    for root in roots:
        base = root.rstrip("/").count("/")
        for top, dirs, files in os.walk(root, onerror=lambda _err: None):
            if top.count("/") - base >= WATCH_DEPTH:
                dirs[:] = []
            for name in (*dirs, *files):
                path = f"{top.rstrip('/')}/{name}"
                if "shoal" in name and (not LAB_NAMED.match(path) or token in name):
                    found.add(path)
    return frozenset(found)


def _lab_dirs(state_root: Path, token: str) -> frozenset[str]:
    """This session's lab directories (keys, overlay upper dirs), which teardown removes."""
    try:
        return frozenset(str(p) for p in state_root.iterdir() if token in p.name)
    except OSError:
        return frozenset()


def _ip_names(args: list[str], token: str) -> frozenset[str]:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    names = set()
    for line in out.splitlines():
        # `ip -o link`: "7: shoal-tabc1234: <...>"; `ip netns list`: "shoal-tabc1234-web1 (id: 3)"
        fields = line.split(": ")
        name = (fields[1] if len(fields) > 1 and fields[0].isdigit() else line).split()[0]
        name = name.split("@")[0]
        if token in name:
            names.add(name)
    return frozenset(names)


def _mounts(token: str) -> frozenset[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    return frozenset(" ".join(line.split()[3:5]) for line in lines if token in line)


def _processes(token: str, own_pid: int) -> frozenset[str]:
    session_marker = f"{SESSION_ENV}={token}".encode()
    lab_marker = re.compile(rb"(?:^|\0)SHOAL_LAB=[a-z0-9]*" + re.escape(token.encode()) + rb"/")
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own_pid:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if session_marker in environ.split(b"\0") or lab_marker.search(environ):
            found.add(f"{entry.name} {cmdline.strip()[:200]}")
    return frozenset(found)


def snapshot(
    token: str, *, roots: tuple[str, ...] = WATCHED_TREES, state_root: Path = STATE_ROOT
) -> Snapshot:
    return Snapshot(
        paths=_shoal_paths(roots, token) | _lab_dirs(state_root, token),
        links=_ip_names(["ip", "-o", "link", "show"], token),
        netns=_ip_names(["ip", "netns", "list"], token),
        mounts=_mounts(token),
        processes=_processes(token, os.getpid()),
    )


def leftovers(before: Snapshot, after: Snapshot) -> list[str]:
    """One line per thing the session left, e.g. `path /var/lib/shoal`; empty when none.

    Processes are compared by pid and command line, so a process this session started and
    that is still alive counts even when one with the same command ran before.
    """
    lines: list[str] = []
    for kind, label in _KINDS:
        new = getattr(after, kind) - getattr(before, kind)
        lines += [f"{label} {item}" for item in sorted(new)]
    return lines


_KINDS = (("paths", "path"), ("links", "link"), ("netns", "netns"), ("mounts", "mount"),
          ("processes", "process"))
