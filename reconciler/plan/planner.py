"""Plan a desired state against every host's facts (`plan_desired`), pure.

Each host's low states run through their state functions in requisite order
(graphlib.TopologicalSorter; ties keep phase, then compile order). Requisites, Salt-style but
only three: `require` orders; `onchanges` includes a state only if a state it names changed
something (produced steps); `watch` orders like require and, when a watched state changed,
adds the state's `mod_watch` step (a reload). A cycle raises RequisiteCycle naming it.

Phases order hosts against each other (steps.Phase): real servers are prepared before the
directors send them traffic, the backup director changes before the primary, removals come
last. A step never runs before what it requires, so its phase is raised to theirs if needed.

Ownership: every state result says what it created (claims) and what it removed (releases);
the director states carry their removals in `args["ledger"]` (their `add` ops enter the ledger
only on a host that adopts: reconciler.plan.adoption). When that changes what the host's
ledger lists, the host's last step writes /var/lib/shoal/ledger.json (a file.managed step),
keeping each sysctl's original value; a host left with nothing of shoal's gets its ledger and
shoal's other working files removed instead (`reconciler.plan.leftovers`). A host whose facts
could not be read at all is marked unreachable, with no steps.

Blocking: a host whose ledger is unknown, or one of whose states could not be planned because a
fact it needs is unknown, gets no step at all: its HostPlan is `blocked`, with a message naming
the host, what could not be read and why (`web3: /var/lib/shoal/ledger.json: Permission
denied`). Planning around the gap would be unsafe (a VIP added without its ARP suppression, a
ledger written over one that lists what shoal owns), so nothing on that host is touched. A host
where shoal does not run as root (a login that is not root without become, or sudo refusing
it) is blocked the same way, before any step, with the host, the user and what is missing.
"""

from __future__ import annotations

import functools
import gc
import graphlib
import heapq
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.desired.models import Desired
from reconciler.errors import RequisiteCycle
from reconciler.facts.hostfacts import FileInfo, HostFacts, Ledger
from reconciler.plan.adoption import adoption_claims
from reconciler.plan.compile import compile_desired
from reconciler.plan.compile_health import health_notes
from reconciler.plan.compile_nftables import failover_notes
from reconciler.plan.invariants import check_host, kept_suppression
from reconciler.plan.leftovers import has_leftovers, leftover_steps
from reconciler.plan.reuse import HostKey, PlanReuse, host_key
from reconciler.plan.steps import (
    HostPlan,
    LowState,
    Phase,
    Plan,
    SkippedRemoval,
    Step,
    plan_id,
    replace,
)
from reconciler.plan.xtables_tables import created_tables, removal_steps
from states.args import ArgsCache, LedgerOp
from states.base import Claim, PlanContext, StateResult
from states.file import FileArgs, managed_result
from states.registry import kind_of

LEDGER_PATH = "/var/lib/shoal/ledger.json"
LEDGER_STATE_ID = "shoal-ledger"


def plan_desired(
    desired: Desired, facts: Mapping[str, HostFacts], reuse: PlanReuse | None = None
) -> Plan:
    """The plan that brings every host from `facts` to `desired`; empty when in sync.

    `reuse`: the last plan's host plans (of the same unit), handed back for every host whose
    low states and facts are unchanged under an unchanged desired state
    (`reconciler.plan.reuse`); it then holds this plan's.
    """
    # Planning allocates millions of small objects and frees none of them until it returns:
    # the cyclic collector would walk them over and over (about 40% of a 10,000-host plan).
    # Nothing collectable is made here that outlives the plan, so collection waits till then.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _plan_desired(desired, facts, reuse)
    finally:
        if was_enabled:
            gc.enable()


def _plan_desired(
    desired: Desired, facts: Mapping[str, HostFacts], reuse: PlanReuse | None
) -> Plan:
    # One plan's validated args: the compiler (ledger keys, boot form) and the states share them.
    cache = ArgsCache()
    low_states = compile_desired(desired, facts, cache)
    ctx = PlanContext(desired=desired, facts=facts, args=cache)
    by_host: dict[str, list[LowState]] = defaultdict(list)
    for low in low_states:
        by_host[low.host].append(low)
    hosts = set(by_host) | {h for h, f in facts.items() if _ledger_entries(f) or has_leftovers(f)}
    plans: dict[str, HostPlan] = {}
    if reuse is not None:
        reuse.begin(desired)
    for host in sorted(hosts):
        hf = facts.get(host)
        if hf is None:
            plans[host] = HostPlan(
                host=host, facts_digest="", reachable=False, unknown_reason="no facts gathered"
            )
            continue
        lows = by_host.get(host, [])
        key = _reuse_key(hf, lows) if reuse is not None else None
        if reuse is not None and key is not None:
            again = reuse.get(host, key)
            if again is not None:
                plans[host] = again
                continue
        plans[host] = plan_one_host(host, lows, ctx, hf)
        if reuse is not None and key is not None:
            reuse.put(host, key, plans[host])
    if reuse is not None:
        reuse.end()
    digests = {h: hp.facts_digest for h, hp in plans.items()}
    return Plan(
        id=plan_id(desired.revision, digests, plans),
        revision=desired.revision,
        clusters=tuple(sorted(desired.clusters)),
        hosts=plans,
        low_states=tuple(low_states),
    )


def plan_one_host(host: str, lows: Sequence[LowState], ctx: PlanContext, hf: HostFacts) -> HostPlan:
    """One host's plan, safety checks included: a pure function of the desired state, the
    host's low states and its facts (what `reconciler.plan.reuse` relies on)."""
    refused = privilege_refusal(ctx.desired, host, hf)
    if refused is not None:
        return _blocked(host, hf, refused, ())
    reason = unreachable_reason(hf)
    if reason is not None:
        return HostPlan(host=host, facts_digest=hf.digest(), reachable=False, unknown_reason=reason)
    return checked(plan_host(host, lows, ctx, hf), ctx.desired, hf, lows)


def _reuse_key(hf: HostFacts, lows: Sequence[LowState]) -> HostKey | None:
    try:
        return host_key(hf, lows)
    except TypeError:
        return None  # args no cache can compare (a TOML date): planned afresh every time


def privilege_refusal(desired: Desired, host: str, facts: HostFacts) -> str | None:
    """Why shoal may not change anything on `host` as this login, or None if it runs as root.

    Everything shoal changes needs root: a login that is not root (become unset, or a
    become_user that is not root) would fail at its first step, half-way through a phase.
    """
    if facts.privilege_error is not None:
        return facts.privilege_error
    login = facts.login.value
    if login is None:
        if unreachable_reason(facts) is not None:
            return None  # nothing was read: the host is unreachable, and reported as such
        return f"{host}: cannot tell which user shoal runs as: {facts.login.unknown_reason}"
    if login.uid == 0:
        return None
    cfg = desired.inventory.hosts.get(host)
    if cfg is None or cfg.become == "none":
        return (
            f"{host}: login user {login.user} (uid {login.uid}) is not root and become is not "
            f'set: shoal changes need root; set become = "sudo" for {host} in inventory.toml '
            "(or under [login] in shoal.toml) and install what `shoal sudoers` prints"
        )
    return (
        f"{host}: sudo -u {cfg.become_user} runs shoal as {login.user} (uid {login.uid}), not "
        f'root: shoal changes need root; set become_user = "root"'
    )


def unreachable_reason(facts: HostFacts) -> str | None:
    """Why nothing could be read from the host, or None if something could."""
    basics = (facts.hostname, facts.interfaces, facts.sysctls, facts.tools)
    if all(not f.known for f in basics):
        return facts.hostname.unknown_reason or "facts unknown"
    return None


def _ledger_entries(facts: HostFacts) -> bool:
    return facts.ledger.known and facts.ledger.value is not None and any(
        facts.ledger.value.entries.values()
    )


# --- one host -------------------------------------------------------------------------------------


def order_low_states(host: str, states: Sequence[LowState]) -> list[LowState]:
    """Requisite order; among ready states, the lower phase first, then compile order.

    Kahn's algorithm with a heap of the ready states keyed (phase, compile index): each time,
    the first ready state in that order goes next. A cycle leaves states that never become
    ready; graphlib then names it.
    """
    shape = tuple((low.id, int(low.phase), (*low.require, *low.watch, *low.onchanges))
                  for low in states)  # fmt: skip
    order = _kahn_order(shape)
    if order is not None:
        return [states[i] for i in order]
    return _order_with_graphlib(host, states)


@functools.lru_cache(maxsize=1024)
def _kahn_order(shape: tuple[tuple[str, int, tuple[str, ...]], ...]) -> tuple[int, ...] | None:
    """order_low_states on (id, phase, requisites) alone, as indexes; None on a cycle. Kept:
    the real servers of one template have the same shape."""
    by_id = {sid: (phase, deps) for sid, phase, deps in shape}
    index = {sid: i for i, (sid, _, _) in enumerate(shape)}
    waiting: dict[str, int] = {}  # id -> requisites not yet placed
    successors: dict[str, list[str]] = defaultdict(list)
    for sid, (_, requisites) in by_id.items():
        deps = {d for d in requisites if d in by_id}
        waiting[sid] = len(deps)
        for d in deps:
            successors[d].append(sid)
    ready = [(by_id[i][0], index[i], i) for i, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    out: list[int] = []
    while ready:
        sid = heapq.heappop(ready)[2]
        out.append(index[sid])
        for nxt in successors.get(sid, ()):
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                heapq.heappush(ready, (by_id[nxt][0], index[nxt], nxt))
    return tuple(out) if len(out) == len(by_id) else None


def _order_with_graphlib(host: str, states: Sequence[LowState]) -> list[LowState]:
    """order_low_states as graphlib does it; raises RequisiteCycle naming the cycle."""
    index = {low.id: i for i, low in enumerate(states)}
    by_id = {low.id: low for low in states}
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for low in states:
        deps = [d for d in (*low.require, *low.watch, *low.onchanges) if d in by_id]
        sorter.add(low.id, *deps)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = [str(n) for n in exc.args[1]]
        raise RequisiteCycle(host, cycle) from None
    out: list[LowState] = []
    ready: list[str] = []
    while sorter.is_active():
        ready += sorter.get_ready()
        ready.sort(key=lambda i: (by_id[i].phase, index[i]))
        nxt = ready.pop(0)
        out.append(by_id[nxt])
        sorter.done(nxt)
    return out


def plan_host(host: str, states: Sequence[LowState], ctx: PlanContext, hf: HostFacts) -> HostPlan:
    ordered = order_low_states(host, states)
    step_ids: dict[str, tuple[str, ...]] = {}  # low state id -> ids of its steps
    phase_of: dict[str, Phase] = {}  # low state id -> phase of its steps
    position: dict[str, int] = {}
    steps: list[Step] = []
    skipped: list[SkippedRemoval] = []
    claims: list[Claim] = []
    releases: list[Claim] = []
    ops: list[LedgerOp] = []
    adopting = ctx.desired.adopts(host)
    adopted: list[Claim] = []
    for low in ordered:
        if low.onchanges and not any(step_ids.get(t) for t in low.onchanges):
            step_ids[low.id] = ()
            continue  # nothing it listens to changed
        kind = kind_of(low.function)
        args = kind.parse(low, ctx.args)
        kept = kept_suppression(low, hf, states) if low.origin == "ledger" else None
        if kept is not None:
            result = StateResult(skipped=(SkippedRemoval(host=host, state_id=low.id, reason=kept),))
        else:
            result = kind.plan(low, args, ctx)
        if kind.watch is not None and any(step_ids.get(t) for t in low.watch):
            watched = kind.watch(low, args, ctx)
            result = StateResult(
                steps=result.steps + watched.steps,
                skipped=result.skipped + watched.skipped,
                claims=result.claims,
                releases=result.releases,
            )
        deps = [t for t in (*low.require, *low.watch, *low.onchanges) if step_ids.get(t)]
        phase = max([low.phase, *(phase_of[t] for t in deps)])
        phase_of[low.id] = phase
        previous: tuple[str, ...] = tuple(s for t in deps for s in step_ids[t])
        mine: list[str] = []
        for step in result.steps:
            fixed = replace(
                step, phase=phase, require=tuple(dict.fromkeys((*step.require, *previous)))
            )
            position[fixed.id] = len(position)
            steps.append(fixed)
            mine.append(fixed.id)
            previous = (fixed.id,)
        step_ids[low.id] = tuple(mine)
        skipped += result.skipped
        claims += result.claims
        releases += result.releases
        if adopting:
            adopted += adoption_claims(low, kind, args, result)
        if not result.skipped and kind.ledger is not None:
            # `add` ops are what the state would own: it claims what it creates (adoption.py).
            ops += [op for op in kind.ledger(args) if op.op != "add"]
    steps.sort(key=lambda s: (s.phase, position[s.id]))
    if not hf.ledger.known or hf.ledger.value is None:
        why = hf.ledger.unknown_reason or "unknown"
        why = why if LEDGER_PATH in why else f"{LEDGER_PATH}: {why}"
        skipped.insert(
            0,
            SkippedRemoval(
                host=host,
                state_id=LEDGER_STATE_ID,
                reason=f"ledger unknown ({why}): nothing is changed on this host",
                fact_unknown=True,
            ),
        )
        return _blocked(host, hf, f"{host}: {why}", skipped)
    unknown = [s for s in skipped if s.fact_unknown]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        return _blocked(host, hf, f"{host}: {unknown[0].state_id}: {unknown[0].reason}{more}",
                        skipped)  # fmt: skip
    claims += created_tables(hf, steps)
    owned = hf.ledger.value.entries
    adopted = [c for c in adopted if c.key not in owned.get(c.function, ())]
    new = updated_ledger(hf.ledger.value, claims + adopted, releases, ops)
    tables, dropped = removal_steps(host, hf, new, steps)
    if tables or dropped:
        steps += tables
        new = updated_ledger(new, (), dropped)
    # Nothing of shoal's left on the host: remove its own files instead of an empty ledger.
    cleanup = leftover_steps(host, hf, states, new, skipped, steps)
    if cleanup is not None:
        steps += cleanup
    elif normalized(new) != normalized(hf.ledger.value):
        steps.append(ledger_step(host, hf, new, steps, adopted))
    return HostPlan(
        host=host, facts_digest=hf.digest(), steps=tuple(steps), skipped=tuple(skipped)
    )


def _blocked(host: str, hf: HostFacts, why: str, skipped: Sequence[SkippedRemoval]) -> HostPlan:
    return HostPlan(host=host, facts_digest=hf.digest(), skipped=tuple(skipped), blocked=why)


def checked(hp: HostPlan, desired: Desired, hf: HostFacts, states: Sequence[LowState]) -> HostPlan:
    """`hp` with the safety invariants' findings; a host that breaks one keeps no step."""
    found = check_host(hp.host, hf, desired, hp.steps, {low.id: low for low in states})
    notes = found.notes + failover_notes(desired, hp.host) + health_notes(desired, hf)
    if not found.violations and not notes:
        return hp
    steps = () if found.violations else hp.steps
    return replace(hp, steps=steps, violations=found.violations, notes=notes)


# --- the ledger -----------------------------------------------------------------------------------


def normalized(ledger: Ledger) -> Ledger:
    return Ledger(
        entries={f: tuple(sorted(set(k))) for f, k in sorted(ledger.entries.items()) if k},
        sysctl_originals=dict(sorted(ledger.sysctl_originals.items())),
    )


def updated_ledger(
    old: Ledger,
    claims: Sequence[Claim],
    releases: Sequence[Claim],
    ops: Sequence[LedgerOp] = (),
) -> Ledger:
    """`old` with this plan's claims added, releases dropped and director ops applied."""
    entries: dict[str, set[str]] = {f: set(k) for f, k in old.entries.items()}
    originals = dict(old.sysctl_originals)
    for c in releases:
        entries.get(c.function, set()).discard(c.key)
        if c.function == "sysctl.present":
            originals.pop(c.key, None)
    for c in claims:
        entries.setdefault(c.function, set()).add(c.key)
        if c.original is not None:
            # The first value shoal saw is the host's own; later ones are shoal's.
            originals.setdefault(c.key, c.original)
    for op in ops:
        keys = set(op.keys)
        if op.op == "add":
            entries.setdefault(op.function, set()).update(keys)
        elif op.op == "remove":
            entries.get(op.function, set()).difference_update(keys)
        else:  # replace
            entries[op.function] = keys
    return normalized(
        Ledger(entries={f: tuple(k) for f, k in entries.items()}, sysctl_originals=originals)
    )


def ledger_text(ledger: Ledger) -> str:
    """`json.dumps(..., indent=2, sort_keys=True)` of the normalized ledger, plus a newline."""
    n = normalized(ledger)
    return _ledger_text(tuple(n.entries.items()), tuple(n.sysctl_originals.items()))


@functools.lru_cache(maxsize=4096)
def _ledger_text(entries: tuple[tuple[str, tuple[str, ...]], ...],
                 originals: tuple[tuple[str, str], ...]) -> str:  # fmt: skip
    # Most hosts of a plan write one of a few ledgers (every real server of a service the same):
    # the text is made once per distinct ledger. json's indenting encoder is pure Python and
    # slow; `_indented` writes the same text for this plain data several times faster.
    data = {"entries": {f: list(k) for f, k in entries}, "sysctl_originals": dict(originals)}
    return _indented(data, "\n") + "\n"


def _indented(value: Any, newline: str) -> str:
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        inner = newline + "  "
        items = (f"{json.dumps(k)}: {_indented(v, inner)}" for k, v in sorted(value.items()))
        return "{" + inner + ("," + inner).join(items) + newline + "}"
    if isinstance(value, list) and value:
        inner = newline + "  "
        return "[" + inner + ("," + inner).join(_indented(v, inner) for v in value) + newline + "]"
    if isinstance(value, dict | list | str):
        return json.dumps(value)  # "{}", "[]" or a string
    return json.dumps(value, indent=2, sort_keys=True)


def ledger_step(host: str, hf: HostFacts, new: Ledger, steps: Sequence[Step],
                adopted: Sequence[Claim] = ()) -> Step:  # fmt: skip
    """The file.managed step writing the ledger, after every other step of the host; it names
    what the host hands over to shoal (`adopted`), if anything."""
    phase = max((s.phase for s in steps), default=Phase.REAL_SERVERS_CLEANUP)
    low = LowState(id=LEDGER_STATE_ID, function="file.managed", host=host, phase=phase,
                   origin="ledger")  # fmt: skip
    args = FileArgs(path=LEDGER_PATH, content=ledger_text(new), mode="0644")
    info = None
    if hf.files.known and hf.files.value is not None:
        info = hf.files.value.get(LEDGER_PATH)
    if info is None:
        # The ledger fact is known: an empty one means there was no file.
        old = hf.ledger.value or Ledger()
        existed = bool(normalized(old).entries or old.sysctl_originals)
        info = FileInfo(path=LEDGER_PATH, exists=existed)
    # Written whatever the digest says: the ledger fact, not the file digest, decided it differs.
    info = info.model_copy(update={"sha256": None})
    step = managed_result(low, args, info, claim=False).steps[0]
    description = "record what shoal owns on this host (ledger)"
    if adopted:
        description += "; adopt, made by hand: " + "; ".join(
            f"{c.function} {c.key}" for c in sorted(adopted, key=lambda c: (c.function, c.key)))
    return replace(step, description=description, require=tuple(s.id for s in steps))
