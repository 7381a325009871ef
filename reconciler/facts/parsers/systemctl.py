"""`systemctl show -p Id,ActiveState,UnitFileState UNIT...` to active/enabled maps.

The output is one block of `Key=value` lines per unit, blocks separated by a blank line. A unit
that does not exist still gets a block (`ActiveState=inactive`, empty `UnitFileState`).
Units are named without the `.service` suffix.
"""

from __future__ import annotations

from reconciler.errors import FactParseError

_ENABLED = {"enabled", "enabled-runtime", "static", "alias", "indirect", "generated"}


def parse_systemctl_show(text: str) -> tuple[dict[str, bool], dict[str, bool]]:
    """(active, enabled) per unit."""
    active: dict[str, bool] = {}
    enabled: dict[str, bool] = {}
    for block in text.strip().split("\n\n"):
        props: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if not sep:
                raise FactParseError("systemctl", f"unexpected line {line!r}")
            props[key] = value
        if not props:
            continue
        if "Id" not in props or "ActiveState" not in props:
            raise FactParseError("systemctl", f"block without Id/ActiveState: {block!r}")
        name = props["Id"].removesuffix(".service")
        active[name] = props["ActiveState"] == "active"
        enabled[name] = props.get("UnitFileState", "") in _ENABLED
    return active, enabled
