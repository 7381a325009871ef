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
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field

from reconciler.desired.models import InterfaceName, Name
from reconciler.facts.hostfacts import NftTable
from reconciler.facts.parsers.nft_table import Fingerprint, observed_fingerprint
from reconciler.plan.steps import LowState
from states.args import Args
from states.base import Claim, PlanContext, StateResult
from states.common import FactUnknown, host_facts, known, make_step, skip, tool_missing
from states.kind import Ownership, Persistence, StateKind, each
from states.nft_scripts import (
    heredoc,
    load_argv,
    restore_argv,
    save_then_delete_argv,
    save_then_load_argv,
)
from states.nft_syntax import FAMILIES, TABLE_PREFIX, Element, Family, Rule, SetType, TableName

FUNCTION = "nft.table_present"
ARP_TABLE = "shoal_arp"
COMMENT_PREFIX = "shoal:"


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


def ledger_key(args: NftTableArgs) -> str:
    return key_of(args.family, args.name)
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


# --- comparing with the facts ---------------------------------------------------------------------


def expected_fingerprint(args: NftTableArgs) -> Fingerprint:
    """What `observed_fingerprint` reads from the table `render(args)` writes."""
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


def present(low: LowState, args: NftTableArgs, ctx: PlanContext) -> StateResult:
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


def absent(low: LowState, args: NftTableAbsentArgs, ctx: PlanContext) -> StateResult:
    key = args.key
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


def restore_lines(args: NftTableArgs) -> list[str]:
    """The table at boot: the same atomic replace a step does."""
    return heredoc(render(args))


PRESENT = StateKind(
    FUNCTION,
    NftTableArgs,
    present,
    owns=Ownership(ledger_key, "nft.table_absent", 30),
    persist=Persistence(30, each(restore_lines)),
)
ABSENT = StateKind("nft.table_absent", NftTableAbsentArgs, absent, removes_only=True)
