"""The `nftables` director backend: shoal's own `netdev shoal_dsr` table (state `nft.dsr_table`).

This module plans; the desired table and its bucket maths are `states.nft_dsr_model`, its text
`states.nft_dsr_render`, and reading it back from the facts `reconciler.facts.parsers.nft_dsr`.

Direct Routing without IPVS, the way nftlb's "dsr" mode does it: an ingress chain on the
director's interface matches `ip daddr VIP <proto> dport PORT`, rewrites `ether saddr` to the
director's MAC (or the bridge learns the client's MAC on the director's port) and `ether daddr`
to a real server's MAC, then `fwd`s the frame out of the same interface. The real server answers
the client directly. An IPv6 service is the same with `ip6 daddr VIP` and `ip6 saddr`
(`states.nft_dsr_render` says why its flow pins key on the address's low 96 bits); the director
holds an IPv6 VIP as a /128 with `nodad` on that interface (states.addr), so it answers the
clients' Neighbour Solicitations.

Choosing the real server: a jhash of the flow (`ip saddr . <proto> sport`, or `ip saddr` alone for
a persistent service) modulo N, mapped to buckets; each real server gets a contiguous bucket range
proportional to its weight (divided by the weights' gcd), weight 0 gets none (drained).

Flow persistence (zero-loss changes): a stateless hash moves established flows when N or the
bucket layout changes. Every service therefore has a dynamic map `flows_*` keyed by
`ip saddr . sport` whose value is the chosen MAC, written by `update` on every packet (refreshing
its timeout). The first rules of the service chain look the flow up there; only a miss falls
through to the hash. A membership or weight change must keep that map, so the table is never
replaced for them: one `nft -f` transaction adds what is missing and flushes and refills only the
chains (map elements survive a chain flush; tested on nft 1.0.6). A full replace
(`add table; delete table; table {...}`) happens only when the table is new or cannot be read
back in shoal's shape (hand edits, other interface, an older shape of shoal's own).

Closing TCP flows (the director sees only the client's half, like IPVS in DR mode): a client FIN
or RST puts the flow into the set `ends_*` and shortens its `flows_*` element to
CLOSING_TIMEOUT; every later packet of that flow keeps both short. So a finished connection stops
pinning its real server seconds after it ends instead of FLOW_TIMEOUT later. (`delete` from a map
is refused by the kernel from the packet path, hence the set and the per-element timeout.)

Drain: a drained or removed real server keeps its flows through the map; the drain step waits
until no map element points at its MAC any more (or the drain timeout passes). With the closing
rules that is CLOSING_TIMEOUT after its last connection ended, not FLOW_TIMEOUT after it, and once
the drain is over no pin is left that a recycled client port could follow to a real server that
has gone.

Drift: the table comment cannot be changed in place and nft 1.0.6 leaves it out of JSON, so the
digest of the desired model goes into the comment of every dispatch rule; in-sync is decided by
decoding the table's JSON (facts) back into the model and comparing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts
from reconciler.facts.parsers.nft_dsr import DsrTable, Unreadable, decode_table, fwd_interface
from reconciler.plan.steps import Argv, Change, FileWrite, LowState, Step
from states.args import ledger_of
from states.base import PlanContext, StateResult, created
from states.common import skip
from states.kind import Persistence, StateKind
from states.nft_dsr_model import (
    FAMILY,
    TABLE,
    DsrTableAbsentArgs,
    DsrTableArgs,
    current_members,
    same,
    table_from_args,
)
from states.nft_dsr_render import render_replace, render_table, render_update
from states.nft_scripts import heredoc

FUNCTION = "nft.dsr_table"
ABSENT_FUNCTION = "nft.dsr_table_absent"
SCRIPT_PATH = "/var/lib/shoal/nft/shoal_dsr.nft"
UNDO_PATH = "/var/lib/shoal/nft/shoal_dsr.undo.nft"

# A bounded poll: exits 0 when no flow points at the MAC any more, or at the deadline (a drain
# that times out proceeds, like an IPVS drain). Values come in as positional parameters, never
# spliced into the script text.
_DRAIN_SCRIPT = (
    "end=$(( $(date +%s) + $4 )); "
    'while nft list map netdev "$1" "$2" 2>/dev/null | grep -qi -- "$3"; do '
    '[ "$(date +%s)" -ge "$end" ] && break; sleep 1; done; exit 0'
)


def _drain_argv(flow_map: str, mac: str, timeout: float) -> Argv:
    return ("sh", "-c", _DRAIN_SCRIPT, "sh", TABLE, flow_map, mac, str(math.ceil(timeout)))


def plan_dsr_table(low: LowState, args: DsrTableArgs, ctx: PlanContext) -> StateResult:
    """`nft.dsr_table`: bring `netdev shoal_dsr` on the director to the desired model."""
    if args.skip_reason:
        return skip(low, args.skip_reason)
    facts: HostFacts | None = ctx.facts.get(low.host)
    if facts is None or not facts.nft.known or facts.nft.value is None:
        why = facts.nft.unknown_reason if facts is not None else "no facts"
        return skip(low, f"nftables ruleset unknown ({why}); table not planned", unknown=True)
    want = table_from_args(args)
    present = facts.nft.value.table(FAMILY, TABLE)
    current: DsrTable | None = None
    if present is not None:
        try:
            current = decode_table(present.canonical_json, want.interface)
        except (Unreadable, ValueError, KeyError, TypeError, IndexError):
            current = None
        if current is not None and same(current, want):
            return StateResult()

    text = render_table(want)
    if current is not None and current.interface == want.interface:
        script = render_update(want, current)
        how = "update chains, keep flow maps"
    else:
        script = render_replace(want)
        how = "replace table"
    writes = [FileWrite(path=SCRIPT_PATH, content=script, mode="0600")]
    undo: tuple[Argv, ...]
    before: str | None = None
    if present is None:
        undo = (("nft", "delete", "table", FAMILY, TABLE),)
    elif current is not None:
        before = render_table(current)
        writes.append(FileWrite(path=UNDO_PATH, content=render_replace(current), mode="0600"))
        undo = (("nft", "-f", UNDO_PATH),)
    else:
        # Not in shoal's shape: only the executor's snapshot of our tables can restore it.
        before = "(table present, not in shoal's shape)"
        undo = ()
    apply_id = f"{low.host}/{low.id}/apply"
    steps = [
        Step(
            id=apply_id,
            host=low.host,
            state_id=low.id,
            function=low.function,
            subsystem="nft",
            phase=low.phase,
            description=f"nft table {FAMILY} {TABLE} on {want.interface}: {how}",
            change=Change(before=before, after=text),
            writes=tuple(writes),
            commands=(("nft", "-c", "-f", SCRIPT_PATH), ("nft", "-f", SCRIPT_PATH)),
            undo=undo,
        )
    ]
    steps.extend(_drain_steps(low, want, current, apply_id, args.drain_timeout))
    # Only a table shoal makes is shoal's: one found in place (in sync or rewritten) is not.
    return StateResult(steps=tuple(steps), claims=created(args.ledger) if present is None else ())


def _drain_steps(
    low: LowState, want: DsrTable, current: DsrTable | None, after: str, timeout: float
) -> Iterator[Step]:
    """Wait for established flows of every real server that lost all its buckets."""
    if current is None:
        return
    now = current_members(current)
    wanted = current_members(want)
    maps = {s.chain: s.flow_map for s in current.services}
    for chain in sorted(now):
        for mac in sorted(now[chain] - wanted.get(chain, set())):
            yield Step(
                id=f"{low.host}/{low.id}/drain/{chain}/{mac}",
                host=low.host,
                state_id=low.id,
                function=low.function,
                subsystem="nft",
                phase=low.phase,
                description=f"wait up to {timeout:g}s for flows of {mac} in {maps[chain]} to end",
                commands=(_drain_argv(maps[chain], mac, timeout),),
                require=(after,),
            )


def _restore_lines(host: str, args: Sequence[DsrTableArgs], desired: Desired) -> list[str]:
    """The full table at boot (replacing whatever is there)."""
    tables = [table_from_args(a, at_boot=True) for a in args]
    return [line for t in tables for line in heredoc(render_replace(t))]


def plan_dsr_table_absent(
    low: LowState, args: DsrTableAbsentArgs, ctx: PlanContext
) -> StateResult:
    """`nft.dsr_table_absent`: delete the table from a host that is no nftables director now."""
    facts = ctx.facts.get(low.host)
    if facts is None or not facts.nft.known or facts.nft.value is None:
        return skip(low, "nftables ruleset unknown; table removal not planned", unknown=True)
    present = facts.nft.value.table(FAMILY, TABLE)
    if present is None:
        return StateResult()
    writes: tuple[FileWrite, ...] = ()
    undo: tuple[Argv, ...] = ()
    try:
        interface = fwd_interface(present.canonical_json)
        current = decode_table(present.canonical_json, interface) if interface else None
    except (Unreadable, ValueError, KeyError, TypeError, IndexError):
        current = None
    if current is not None:
        writes = (FileWrite(path=UNDO_PATH, content=render_replace(current), mode="0600"),)
        undo = (("nft", "-f", UNDO_PATH),)
    step = Step(
        id=f"{low.host}/{low.id}/delete", host=low.host, state_id=low.id,
        function=low.function, subsystem="nft", phase=low.phase,
        description=f"delete nft table {FAMILY} {TABLE}",
        change=Change(before=render_table(current) if current else "(table present)", after=None),
        writes=writes, commands=(("nft", "delete", "table", FAMILY, TABLE),), undo=undo,
    )  # fmt: skip
    return StateResult(steps=(step,))


TABLE_PRESENT = StateKind(
    FUNCTION, DsrTableArgs, plan_dsr_table, persist=Persistence(40, _restore_lines),
    ledger=ledger_of,
)  # fmt: skip
TABLE_ABSENT = StateKind(
    ABSENT_FUNCTION, DsrTableAbsentArgs, plan_dsr_table_absent, ledger=ledger_of,
    removes_only=True,
)  # fmt: skip
