"""`keepalived -v` to its version (the first line: `Keepalived v2.2.7 (01/16,2022)`)."""

from __future__ import annotations

import re

from reconciler.errors import FactParseError

_VERSION_RE = re.compile(r"^Keepalived v(?P<version>\d+(?:\.\d+)+)\b")


def parse_keepalived_version(text: str) -> str:
    for line in text.splitlines():
        m = _VERSION_RE.match(line.strip())
        if m:
            return m.group("version")
    raise FactParseError("keepalived version", f"no version line in {text[:80]!r}")
