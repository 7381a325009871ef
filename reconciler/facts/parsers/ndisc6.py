"""`ndisc6 -m` output to the MACs that advertised the solicited address.

Verification falls back to ndisc6 (installed set-uid root by Debian) where the login has no
packet socket for its own Neighbour Discovery probe (`reconciler.verify.probe_nd`).
"""

from __future__ import annotations

import re

_ANSWER_RE = re.compile(
    r"^Target link-layer address: ([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})$", re.M
)


def parse_ndisc6(text: str) -> list[str]:
    """The advertising MACs (lower case), first-seen order, no repeats."""
    macs: list[str] = []
    for m in _ANSWER_RE.finditer(text):
        mac = m.group(1).lower()
        if mac not in macs:
            macs.append(mac)
    return macs
