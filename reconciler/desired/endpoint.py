"""How an address and a port are written together: `10.77.0.100:80`, `[fd77::100]:80`.

An IPv6 address already holds colons, so `fd77::100:80` reads as one longer address; RFC 3986
(and ipvsadm, keepalived's logs, curl) bracket it. Every message, plan text, page and record that
shows a VIP:port or address:port goes through `endpoint`, so both families read the same way.
"""

from __future__ import annotations


def endpoint(address: str, port: int | str) -> str:
    """`address:port`, the address bracketed when it is IPv6 (it holds a colon)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def service_endpoint(address: str, port: int | str, protocol: str) -> str:
    """`10.77.0.100:80/tcp` or `[fd77::100]:80/tcp`: a virtual service as messages name it."""
    return f"{endpoint(address, port)}/{protocol}"
