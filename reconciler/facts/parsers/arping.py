"""iputils `arping` output to the MACs that replied.

Verification falls back to `arping -b` where the login has no packet socket for its own ARP
probe (`reconciler.verify.probe_arp`).
"""

from __future__ import annotations

import re

_ARP_REPLY_RE = re.compile(r"reply from (\d+\.\d+\.\d+\.\d+) \[([0-9A-Fa-f:]{17})\]")


def parse_arping(text: str) -> list[str]:
    """The replying MACs (lower case), first-seen order, no repeats."""
    macs: list[str] = []
    for m in _ARP_REPLY_RE.finditer(text):
        mac = m.group(2).lower()
        if mac not in macs:
            macs.append(mac)
    return macs
