"""`ip -j neigh show to ADDRESS dev IF` to the entry's MAC.

Verification reads a client's neighbour entry for a VIP: it must point at the active director.
"""

from __future__ import annotations

import json


def parse_ip_neigh(text: str) -> str | None:
    """The entry's MAC (lower case), or None when there is none or it is incomplete."""
    for item in json.loads(text or "[]"):
        mac = item.get("lladdr")
        if mac:
            return str(mac).lower()
    return None
