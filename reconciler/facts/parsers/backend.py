"""Which backend an xtables tool runs on, from its `-V` line.

`arptables v1.8.9 (nf_tables)` and `iptables v1.8.9 (nf_tables)` are the nft backend;
`iptables v1.8.9 (legacy)` and the standalone legacy `arptables v0.0.5` (no suffix at all) are
the legacy one.
"""

from __future__ import annotations

import re

from reconciler.errors import FactParseError
from reconciler.facts.hostfacts import FirewallBackend

_VERSION_RE = re.compile(r"^(?P<tool>[\w-]+) v(?P<version>[\w.]+)(?: \((?P<flavour>[\w-]+)\))?$")


def parse_xtables_version(text: str) -> FirewallBackend:
    """The backend named by the first line of `arptables -V` or `iptables -V`."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    m = _VERSION_RE.match(line.strip())
    if m is None:
        raise FactParseError("xtables version", f"unexpected version line {line!r}")
    flavour = m.group("flavour")
    if flavour == "nf_tables":
        return "nft"
    if flavour in (None, "legacy"):
        return "legacy"
    raise FactParseError("xtables version", f"unknown backend {flavour!r} in {line!r}")


def legacy_tables_warned(stderr: str) -> bool:
    """Whether an nft-backend save tool warned that legacy tables are present too."""
    return "-legacy tables present" in stderr
