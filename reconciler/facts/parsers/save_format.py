"""The `*-save` text format that iptables-save and arptables-save share.

Both print `*TABLE`, then `:CHAIN POLICY` lines, then `-A CHAIN ...` rules (with `-c`, behind a
`[pkts:bytes] ` counter prefix), then `COMMIT`, with `#` comments around. This module walks that
frame once; each tool's parser only turns the rule lines into its own rule type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from reconciler.errors import FactParseError

_COUNTERS_RE = re.compile(r"^\[\d+:\d+\]\s+")


@dataclass(slots=True)
class SavedTable:
    """One table of save output: its chains and policies, and its rule lines in order."""

    table: str | None = None
    chains: list[str] = field(default_factory=list)
    policies: dict[str, str] = field(default_factory=dict)
    # (line number, `-A CHAIN ...` with the counters removed)
    rule_lines: list[tuple[int, str]] = field(default_factory=list)


def read_saved_table(text: str, *, parser: str, table: str, table_first: bool) -> SavedTable:
    """Split save output of the one table `table` into chains, policies and rule lines.

    `table_first`: every line must come after the `*TABLE` line (iptables-save always prints
    it first); otherwise the caller decides what a missing table line means.
    """
    saved = SavedTable()
    for lineno, raw_line in enumerate(text.splitlines(), 1):
        line = raw_line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            saved.table = line[1:]
            if saved.table != table:
                raise FactParseError(parser, f"line {lineno}: expected *{table}, got {line!r}")
            continue
        if table_first and saved.table is None:
            raise FactParseError(parser, f"line {lineno}: {line!r} before a table line")
        if line.startswith(":"):
            parts = line[1:].split()
            if not parts:
                raise FactParseError(parser, f"line {lineno}: empty chain line")
            saved.chains.append(parts[0])
            saved.policies[parts[0]] = parts[1] if len(parts) > 1 else "-"
            continue
        line = _COUNTERS_RE.sub("", line)
        if not line.startswith("-A "):
            raise FactParseError(parser, f"line {lineno}: unexpected {raw_line!r}")
        saved.rule_lines.append((lineno, line))
    return saved
