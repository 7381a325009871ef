"""`key=value` lines (what the facts script prints from /proc/sys) to a dict.

Keys use sysctl's dotted names with the interface name verbatim:
`net.ipv4.conf.eth0.arp_ignore`, `net.ipv4.ip_forward`, `net.ipv4.vs.expire_nodest_conn`.
"""

from __future__ import annotations

from reconciler.errors import FactParseError


def parse_sysctls(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.startswith("net."):
            raise FactParseError("sysctl", f"unexpected line {line!r}")
        out[key] = value.strip()
    return out
