"""`ip -j addr` to a tuple of `Interface`."""

from __future__ import annotations

import json
from typing import Any

from reconciler.errors import FactParseError
from reconciler.facts.hostfacts import Address, Interface


def _address(info: dict[str, Any]) -> Address | None:
    family = info.get("family")
    local = info.get("local")
    if family not in ("inet", "inet6") or not isinstance(local, str):
        return None
    return Address(
        address=local,
        prefix=int(info["prefixlen"]),
        label=info.get("label"),
        family=family,
        scope=info.get("scope"),
    )


def parse_ip_addr(text: str) -> tuple[Interface, ...]:
    """Every interface with its MAC, admin state (UP flag) and addresses, in kernel order."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FactParseError("ip addr", f"not JSON: {exc}") from None
    if not isinstance(data, list):
        raise FactParseError("ip addr", "expected a JSON list")
    out: list[Interface] = []
    try:
        for link in data:
            addresses = tuple(
                a for a in (_address(i) for i in link.get("addr_info", [])) if a is not None
            )
            out.append(
                Interface(
                    name=link["ifname"],
                    mac=link.get("address"),
                    up="UP" in link.get("flags", []),
                    addresses=addresses,
                )
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise FactParseError("ip addr", f"unexpected structure: {exc!r}") from None
    return tuple(out)
