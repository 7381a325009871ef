"""`nft.table_present` / `nft.table_absent`: a whole nftables table that shoal owns.

Tables are named `shoal_*` and always written whole, atomically, in one `nft -f -` transaction:
`table X` (create if missing), `delete table X`, `table X {...}` (research notes 4.7). That is
idempotent and never touches another table; there is no flush anywhere.

In sync: nft 1.0.6 leaves table and chain comments out of `nft -j list`, so the digest of the
desired table goes into the comment of every set and rule, which the JSON does carry. The table
in the facts is decoded into a fingerprint (sets with their elements and comments, base chains,
rule comments per chain) and compared with the fingerprint of the desired table; a hand-added
rule, a removed element or an older definition all differ.

The real servers' ARP table (`arp shoal_arp`) is built by `arp_table_args`: requests for the
VIPs are dropped on input, and ARP the host sends with a VIP as sender gets the RIP instead.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from reconciler.desired.models import InterfaceName, Name
from reconciler.facts.hostfacts import NftTable
from reconciler.plan.steps import LowState
from states.base import Claim, PlanContext, StateResult, cached_args
from states.common import (
    Args,
    FactUnknown,
    host_facts,
    known,
    make_step,
    skip,
    tool_missing,
)

FUNCTION = "nft.table_present"
TABLE_PREFIX = "shoal_"
ARP_TABLE = "shoal_arp"
COMMENT_PREFIX = "shoal:"

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


class NftSet(Args):
    name: Name
    type: SetType
    elements: tuple[Element, ...] = ()


class NftChain(Args):
    name: Name
    type: Literal["filter", "nat", "route"] = "filter"
    hook: Literal["prerouting", "input", "forward", "output", "postrouting", "ingress", "egress"]
    priority: Annotated[str, Field(pattern=r"^(-?[0-9]{1,5}|filter|dstnat|srcnat|raw|mangle)$")]
    policy: Literal["accept", "drop"] = "accept"
    device: InterfaceName | None = None
    rules: tuple[Rule, ...] = ()


class NftTableArgs(Args):
    family: Family
    name: TableName
    sets: tuple[NftSet, ...] = ()
    chains: tuple[NftChain, ...] = ()


class NftTableAbsentArgs(Args):
    key: str


def key_of(family: str, name: str) -> str:
    return f"{family} {name}"


def ledger_key(low: LowState) -> str:
    t = cached_args(NftTableArgs, low)
    return key_of(t.family, t.name)


def arp_table_args(vips: Sequence[str], rip: str) -> dict[str, Any]:
    """The real server's ARP suppression for the nft-arp method, as nft.table_present args."""
    return {
        "family": "arp",
        "name": ARP_TABLE,
        "sets": [{"name": "vips", "type": "ipv4_addr", "elements": sorted(set(vips))}],
        "chains": [
            {
                "name": "input",
                "hook": "input",
                "priority": "filter",
                "rules": ["arp operation request arp daddr ip @vips drop"],
            },
            {
                "name": "output",
                "hook": "output",
                "priority": "filter",
                "rules": [f"arp saddr ip @vips arp saddr ip set {rip}"],
            },
        ],
    }


def digest(args: NftTableArgs) -> str:
    body = json.dumps(args.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def render(args: NftTableArgs) -> str:
    """The `nft -f` text that replaces the table atomically (create, delete, define)."""
    comment = f'comment "{COMMENT_PREFIX}{digest(args)}"'
    head = f"{args.family} {args.name}"
    lines = [f"table {head}", f"delete table {head}", f"table {head} {{", f"\t{comment}"]
    for s in args.sets:
        lines += [f"\tset {s.name} {{", f"\t\ttype {s.type}", f"\t\t{comment}"]
        if s.elements:
            lines.append(f"\t\telements = {{ {', '.join(s.elements)} }}")
        lines.append("\t}")
    for c in args.chains:
        device = f' device "{c.device}"' if c.device else ""
        lines += [
            f"\tchain {c.name} {{",
            f"\t\ttype {c.type} hook {c.hook}{device} priority {c.priority}; policy {c.policy};",
        ]
        lines += [f"\t\t{rule} {comment}" for rule in c.rules]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


SAVE_DIR = "/var/lib/shoal/nft"

# Values reach these scripts as positional parameters ("$1"...), never spliced into the text.
_LOAD = 'printf "%s" "$1" | nft -f -'
_SAVE_THEN_LOAD = (
    'set -e; mkdir -p "$1"; nft list table "$2" "$3" > "$4"; printf "%s" "$5" | nft -f -'
)
_SAVE_THEN_DELETE = (
    'set -e; mkdir -p "$1"; nft list table "$2" "$3" > "$4"; nft delete table "$2" "$3"'
)
_RESTORE = (
    'set -e; { printf "table %s %s\\ndelete table %s %s\\n" "$1" "$2" "$1" "$2"; cat "$3"; }'
    " | nft -f -"
)


def save_path(family: str, name: str) -> str:
    """Where a step keeps the table's previous text (`nft list table`, lossless) for its undo."""
    return f"{SAVE_DIR}/{family}-{name}.prev.nft"


def load_argv(text: str) -> tuple[str, ...]:
    """`nft -f -` with `text` on stdin."""
    return ("sh", "-c", _LOAD, "sh", text)


def save_then_load_argv(family: str, name: str, text: str) -> tuple[str, ...]:
    path = save_path(family, name)
    return ("sh", "-c", _SAVE_THEN_LOAD, "sh", SAVE_DIR, family, name, path, text)


def save_then_delete_argv(family: str, name: str) -> tuple[str, ...]:
    return ("sh", "-c", _SAVE_THEN_DELETE, "sh", SAVE_DIR, family, name, save_path(family, name))


def restore_argv(family: str, name: str) -> tuple[str, ...]:
    """Replace the table (if any) with the text the step saved, in one transaction."""
    return ("sh", "-c", _RESTORE, "sh", family, name, save_path(family, name))


# --- comparing with the facts ---------------------------------------------------------------------

Fingerprint = dict[str, Any]


def expected_fingerprint(args: NftTableArgs) -> Fingerprint:
    comment = COMMENT_PREFIX + digest(args)
    return {
        "sets": {
            s.name: {"type": s.type, "elements": sorted(s.elements), "comment": comment}
            for s in args.sets
        },
        "chains": {
            c.name: {"type": c.type, "hook": c.hook, "policy": c.policy} for c in args.chains
        },
        "rules": {c.name: [comment] * len(c.rules) for c in args.chains if c.rules},
    }


def _objects(canonical_json: str) -> list[dict[str, Any]]:
    data = json.loads(canonical_json) if canonical_json else []
    if isinstance(data, dict):
        data = data.get("nftables", [])
    return [o for o in data if isinstance(o, dict)] if isinstance(data, list) else []


def _element(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def observed_fingerprint(table: NftTable) -> Fingerprint:
    """The same shape as `expected_fingerprint`, from `nft -j list table` JSON."""
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


def in_sync(table: NftTable, args: NftTableArgs) -> bool:
    if table.comment is not None and table.comment != COMMENT_PREFIX + digest(args):
        return False
    return observed_fingerprint(table) == expected_fingerprint(args)


# --- the state functions --------------------------------------------------------------------------


def _table(low: LowState, ctx: PlanContext, family: str, name: str) -> NftTable | None:
    facts = host_facts(low, ctx)
    if not facts.nft.known and tool_missing(facts, "nft"):
        return None
    return known(facts.nft, "nftables ruleset").table(family, name)


def present(low: LowState, ctx: PlanContext) -> StateResult:
    args = cached_args(NftTableArgs, low)
    key = key_of(args.family, args.name)
    try:
        table = _table(low, ctx, args.family, args.name)
    except FactUnknown as exc:
        return skip(low, f"cannot plan nft table {key}: {exc.reason}", unknown=exc.unread)
    if table is not None and in_sync(table, args):
        return StateResult()
    text = render(args)
    step = make_step(
        low,
        "replace" if table is not None else "create",
        "nft",
        f"{'replace' if table is not None else 'create'} nft table {key}",
        before=None if table is None else f"table {key} (other definition)",
        after=text.split("\n", 2)[2].rstrip("\n"),
        commands=(
            (save_then_load_argv(args.family, args.name, text),)
            if table is not None
            else (load_argv(text),)
        ),
        undo=(
            (restore_argv(args.family, args.name),)
            if table is not None
            else (("nft", "delete", "table", args.family, args.name),)
        ),
    )
    return StateResult(steps=(step,), claims=(Claim(FUNCTION, key),))


def absent(low: LowState, ctx: PlanContext) -> StateResult:
    key = cached_args(NftTableAbsentArgs, low).key
    family, _, name = key.partition(" ")
    if family not in FAMILIES or not name.startswith(TABLE_PREFIX) or " " in name:
        return skip(low, f"not deleting nft table {key!r}: not a table shoal owns")
    try:
        table = _table(low, ctx, family, name)
    except FactUnknown as exc:
        return skip(low, f"not deleting nft table {key}: {exc.reason}", unknown=exc.unread)
    release = (Claim(FUNCTION, key),)
    if table is None:
        return StateResult(releases=release)
    step = make_step(
        low,
        "delete",
        "nft",
        f"delete nft table {key} (shoal's own)",
        before=f"table {key}",
        commands=(save_then_delete_argv(family, name),),
        undo=(restore_argv(family, name),),
    )
    return StateResult(steps=(step,), releases=release)
