"""The facts half of a rollback proof: a host's facts without what changes on its own.

After a rollback the facts are gathered again and must have the digest they had before the
phase (`stable_digest`); when they do not, `facts_differences` says which facts differ and how.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from typing import Any

from reconciler.facts.hostfacts import HostFacts
from reconciler.facts.script import IPVS_MODULE_DEFAULTS


def _stable_facts(facts: HostFacts) -> dict[str, Any]:
    """Facts without what changes on its own (IPVS connection counters), and with an empty
    IPVS table the same whether ip_vs is loaded or not: a phase may load the module (states.kmod,
    never unloaded), which creates its net.ipv4.vs.* keys at their defaults and carries nothing.

    nftables tables are taken in (family, name) order, not the kernel's listing order: that is
    creation order, and a table a phase deleted comes back last when its undo recreates it (the
    empty `ip nat` and `ip6 nat` tables iptables-nft leaves, dropped when a REDIRECT method goes
    and recreated in reverse step order by the rollback). Each table's content is still compared
    whole."""
    data: dict[str, Any] = facts.model_dump(mode="json")
    nft = data.get("nft", {}).get("value")
    if isinstance(nft, dict) and isinstance(nft.get("tables"), list):
        nft["tables"].sort(key=lambda t: (str(t.get("family")), str(t.get("name"))))
    ipvs = data.get("ipvs", {}).get("value")
    if isinstance(ipvs, dict):
        for dest in ipvs.get("destinations", []):
            dest["active_connections"] = None
            dest["inactive_connections"] = None
        if not ipvs.get("services") and not ipvs.get("destinations"):
            ipvs["loaded"], ipvs["detail"] = None, None
            sysctls = data.get("sysctls", {}).get("value")
            if isinstance(sysctls, dict):
                for key, default in IPVS_MODULE_DEFAULTS.items():
                    if sysctls.get(key) == default:
                        del sysctls[key]
    return data


def stable_digest(facts: HostFacts) -> str:
    body = json.dumps(_stable_facts(facts), sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def facts_differences(before: HostFacts, after: HostFacts) -> list[str]:
    """Readable differences between two hosts' facts, one entry per fact."""
    b, a = _stable_facts(before), _stable_facts(after)
    out: list[str] = []
    for name in sorted(set(b) | set(a)):
        if b.get(name) == a.get(name):
            continue
        lines = difflib.unified_diff(
            json.dumps(b.get(name), indent=1, sort_keys=True).splitlines(),
            json.dumps(a.get(name), indent=1, sort_keys=True).splitlines(),
            "before",
            "after",
            lineterm="",
            n=1,
        )
        out.append(f"fact {name} differs:\n" + "\n".join(list(lines)[:60]))
    return out
