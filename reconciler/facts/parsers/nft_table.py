"""One nftables table from `nft -j list table` JSON, reduced to what shoal compares.

`observed_fingerprint` keeps, per set, its type, elements and comment; per base chain its type,
hook and policy; per chain the comments of its rules in order. nft 1.0.6 leaves table and chain
comments out of the JSON, so shoal's digest travels in the set and rule comments
(`states.nft`), and a table is in sync when this fingerprint equals the desired one.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.facts.hostfacts import NftTable

Fingerprint = dict[str, Any]


def _objects(canonical_json: str) -> list[dict[str, Any]]:
    data = json.loads(canonical_json) if canonical_json else []
    if isinstance(data, dict):
        data = data.get("nftables", [])
    return [o for o in data if isinstance(o, dict)] if isinstance(data, list) else []


def _element(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def observed_fingerprint(table: NftTable) -> Fingerprint:
    """Sets, chains and rule comments of `table`; `{"unreadable": ...}` for JSON it cannot read."""
    out: Fingerprint = {"sets": {}, "chains": {}, "rules": {}}
    try:
        objects = _objects(table.canonical_json)
    except ValueError:
        return {"unreadable": table.canonical_json}
    for obj in objects:
        if "set" in obj:
            s = obj["set"]
            stype = s.get("type")
            out["sets"][s.get("name")] = {
                "type": " . ".join(stype) if isinstance(stype, list) else stype,
                "elements": sorted(_element(e) for e in s.get("elem", [])),
                "comment": s.get("comment"),
            }
        elif "map" in obj:
            out["sets"][obj["map"].get("name")] = {"map": True}
        elif "chain" in obj:
            c = obj["chain"]
            out["chains"][c.get("name")] = {
                "type": c.get("type"),
                "hook": c.get("hook"),
                "policy": c.get("policy"),
            }
        elif "rule" in obj:
            r = obj["rule"]
            out["rules"].setdefault(r.get("chain"), []).append(r.get("comment"))
    return out
