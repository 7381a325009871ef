"""The nftables vocabulary a `nft.table_present` may use: table names, set types, elements, rules.

Each is a validated string type for the args models of `states.nft`. What passes can be written
into an `nft -f` definition as it is: a set element or type has no characters that would end the
block, and a rule is one rule (no newline, `;`, quote, comment, and balanced braces).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator

TABLE_PREFIX = "shoal_"
FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
Family = Literal["ip", "ip6", "inet", "arp", "bridge", "netdev"]
_ELEMENT_RE = re.compile(r"^[A-Za-z0-9_.:/-]+$")
_TYPE_RE = re.compile(r"^[a-z0-9_]+( \. [a-z0-9_]+)*$")
_RULE_FORBIDDEN = re.compile(r"[\n\r;#\"\\]")


def _check_table_name(value: str) -> str:
    if not value.startswith(TABLE_PREFIX):
        raise ValueError(f"shoal only manages tables named {TABLE_PREFIX}*, not {value!r}")
    return value


def _check_element(value: str) -> str:
    if not _ELEMENT_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a set element")
    return value


def _check_type(value: str) -> str:
    if not _TYPE_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not an nft set type")
    return value


def _check_rule(value: str) -> str:
    # One rule, inside its chain: no newline, ';' or quote to close the block or start another
    # command, and balanced braces (anonymous sets) so the chain cannot be closed early.
    depth = 0
    for ch in value:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            break
    if not value.strip() or _RULE_FORBIDDEN.search(value) or depth != 0:
        raise ValueError(f"{value!r} is not a single nft rule")
    return value.strip()


TableName = Annotated[str, AfterValidator(_check_table_name)]
Element = Annotated[str, AfterValidator(_check_element)]
SetType = Annotated[str, AfterValidator(_check_type)]
Rule = Annotated[str, AfterValidator(_check_rule)]
