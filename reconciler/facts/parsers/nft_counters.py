"""`nft -j list counters table FAMILY NAME` to packets per named counter.

Verification counts arrivals with named counters in a short-lived probe table
(`reconciler.verify.counters`); this reads them back.
"""

from __future__ import annotations

import json


def parse_nft_counters(text: str) -> dict[str, int]:
    """Counter name -> packets."""
    out: dict[str, int] = {}
    for item in json.loads(text).get("nftables", []):
        counter = item.get("counter")
        if counter is not None:
            out[str(counter["name"])] = int(counter["packets"])
    return out
