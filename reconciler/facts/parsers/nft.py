"""`nft -j list ruleset` to `NftRuleset`.

Every table is listed by family, name and comment. For the tables shoal owns (name starts
with `shoal_`) the table's objects are also kept as canonical JSON: handles removed (they change
on every reload) and counter/quota values removed (they change with traffic), so the same
ruleset always gives the same text and a plan's digest does not move with packets.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.errors import FactParseError
from reconciler.facts.hostfacts import NftRuleset, NftTable

OWNED_PREFIX = "shoal_"
_VOLATILE = {"counter": ("packets", "bytes"), "quota": ("used",)}


def _strip(data: Any) -> Any:
    if isinstance(data, list):
        return [_strip(v) for v in data]
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "handle":
            continue
        if key in _VOLATILE and isinstance(value, dict):
            kept = {k: _strip(v) for k, v in value.items() if k not in _VOLATILE[key]}
            out[key] = kept or None
            continue
        out[key] = _strip(value)
    return out


def _is_dynamic(kind: str, body: Any) -> bool:
    """A set or map the data path fills itself (flow pinning): its elements are traffic."""
    if kind not in ("set", "map") or not isinstance(body, dict):
        return False
    flags = body.get("flags", ())
    flags = (flags,) if isinstance(flags, str) else flags
    return "timeout" in body or "dynamic" in flags or "timeout" in flags


def _without_traffic_state(item: dict[str, Any]) -> dict[str, Any]:
    ((kind, body),) = item.items()
    if _is_dynamic(kind, body):
        return {kind: {k: v for k, v in body.items() if k != "elem"}}
    return item


def canonical_table_json(objects: list[dict[str, Any]]) -> str:
    """The objects of one table (in nft's order) as stable, compact JSON.

    Elements of dynamic sets and maps (the DSR director's flow pins) are left out: they change
    with every new client connection, and a digest that moves with traffic would make every
    plan stale before anyone could approve it.
    """
    kept = [_without_traffic_state(o) for o in objects]
    return json.dumps(_strip(kept), sort_keys=True, separators=(",", ":"))


def parse_nft_ruleset(text: str, comments: dict[tuple[str, str], str] | None = None) -> NftRuleset:
    """Parse `nft -j list ruleset`; `comments` fills table comments the JSON lacks."""
    comments = comments or {}
    try:
        data = json.loads(text)
        items = data["nftables"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise FactParseError("nft ruleset", f"not nft JSON: {exc!r}") from None
    tables: list[tuple[str, str, str | None]] = []
    owned: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for item in items:
            ((kind, body),) = item.items()
            if kind == "metainfo":
                continue
            if kind == "table":
                key = (body["family"], body["name"])
                tables.append((key[0], key[1], body.get("comment", comments.get(key))))
                if key[1].startswith(OWNED_PREFIX):
                    owned[key] = [item]
                continue
            key = (body.get("family"), body.get("table"))
            if key in owned:
                owned[key].append(item)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise FactParseError("nft ruleset", f"unexpected structure: {exc!r}") from None
    return NftRuleset(
        tables=tuple(
            NftTable(
                family=family,
                name=name,
                comment=comment,
                canonical_json=canonical_table_json(owned[(family, name)])
                if (family, name) in owned
                else "",
            )
            for family, name, comment in tables
        )
    )


def parse_nft_table_comments(text: str) -> dict[tuple[str, str], str]:
    """Table comments from the text listing (`nft -t list ruleset`).

    nft 1.0.6 leaves table comments out of its JSON, so the facts script also prints the
    `table F N {` and `comment "..."` lines of the text listing when a shoal table exists.
    """
    out: dict[tuple[str, str], str] = {}
    current: tuple[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("table "):
            parts = line.split()
            current = (parts[1], parts[2]) if len(parts) >= 3 else None
        elif line.startswith("\tcomment ") and current is not None:
            value = line.strip()[len("comment ") :]
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out.setdefault(current, value)
            current = None
        else:
            current = None
    return out
