"""Counting SSH connections and session channels on the hosts' side, from sshd's own log.

Every lab host's sshd logs at VERBOSE (or DEBUG1) to a file of its own. One TCP connection is
one `Connection from ...` line; one session channel that ran something (a command, a shell or
a subsystem such as sftp) is one `Starting session: ...` line; the user each connection logged
in as is on its `Accepted publickey for USER from ...` line. The bench remembers each log's
size before a measured command and reads only what was appended, so the numbers are what the
hosts saw, not what a tool claims.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_CONNECTION_RE = re.compile(r"^Connection from (?P<addr>\S+) port \d+ on ")
_SESSION_RE = re.compile(
    r"^Starting session: (?P<kind>command|shell|subsystem '[^']*'|forced-command[^ ]*) for "
)
# The method word keeps out sshd's other "Accepted key ED25519 ... found at" line.
_LOGIN_RE = re.compile(
    r"^Accepted (?:publickey|password|keyboard-interactive\S*) for (?P<user>\S+) from "
)


@dataclass(frozen=True, slots=True)
class SshdCounts:
    """What one host's sshd saw during one measured command."""

    connections: int = 0
    sessions: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # "command", "subsystem 'sftp'", ...
    logins: dict[str, int] = field(default_factory=dict)  # user -> accepted logins


def count_sshd_lines(text: str, client: str | None = None) -> SshdCounts:
    """Connections and sessions in an sshd log excerpt (pure).

    With `client`, only connections from that address count (sessions carry no address we
    filter on: they belong to a connection we already counted, and the lab's sshd sees only the
    controller).
    """
    connections = 0
    sessions = 0
    kinds: dict[str, int] = {}
    logins: dict[str, int] = {}
    for line in text.splitlines():
        # sshd -E prefixes nothing, syslog-style logs prefix a timestamp and tag: find the
        # message wherever it starts.
        msg = _message(line)
        m = _CONNECTION_RE.match(msg)
        if m:
            if client is None or m.group("addr") == client:
                connections += 1
            continue
        s = _SESSION_RE.match(msg)
        if s:
            sessions += 1
            kinds[s.group("kind")] = kinds.get(s.group("kind"), 0) + 1
            continue
        a = _LOGIN_RE.match(msg)
        if a:
            logins[a.group("user")] = logins.get(a.group("user"), 0) + 1
    return SshdCounts(connections=connections, sessions=sessions, kinds=kinds, logins=logins)


def _message(line: str) -> str:
    for marker in ("Connection from ", "Starting session: ", "Accepted "):
        i = line.find(marker)
        if i > 0:
            return line[i:]
    return line


class LogWindow:
    """Remembers where each host's log ended, to count only what a command added."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self._paths = paths
        self._offsets: dict[str, int] = {}

    def mark(self) -> None:
        self._offsets = {h: _size(p) for h, p in self._paths.items()}

    def read(self) -> dict[str, SshdCounts]:
        out: dict[str, SshdCounts] = {}
        for host, path in self._paths.items():
            start = self._offsets.get(host, 0)
            with path.open("rb") as f:
                f.seek(start)
                text = f.read().decode("utf-8", "replace")
            out[host] = count_sshd_lines(text)
        return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@dataclass(frozen=True, slots=True)
class PerHost:
    """Per-host counts summarised over the hosts of one measurement."""

    connections_min: int
    connections_max: int
    sessions_min: int
    sessions_max: int
    hosts: int

    def describe(self) -> str:
        return f"{_span(self.connections_min, self.connections_max)} conn, " + (
            f"{_span(self.sessions_min, self.sessions_max)} ch"
        )


def _span(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def login_problems(counts: dict[str, SshdCounts], user: str) -> dict[str, str]:
    """Hosts whose sshd let in anyone but `user`, or took connections and let no one in as
    `user` (pure): a tool meant to log in as `user` that did not was measured doing something
    else, and a log whose logins went unread must not pass for a clean one."""
    out = {}
    for host, c in sorted(counts.items()):
        others = sorted(u for u in c.logins if u != user)
        if others:
            out[host] = f"let in {', '.join(others)}"
        elif c.connections and not c.logins.get(user):
            out[host] = f"{c.connections} connections, no login as {user}"
    return out


def summarise(counts: dict[str, SshdCounts], hosts: list[str]) -> PerHost:
    """Min/max connections and sessions per host over `hosts` (a host not seen counts 0)."""
    conns = [counts.get(h, SshdCounts()).connections for h in hosts]
    sess = [counts.get(h, SshdCounts()).sessions for h in hosts]
    if not hosts:
        return PerHost(0, 0, 0, 0, 0)
    return PerHost(min(conns), max(conns), min(sess), max(sess), len(hosts))
