"""Helpers every state module shares: fact access, step and skip builders.

Nothing here knows a subsystem. A state module reads facts with `known` (an unknown fact raises
FactUnknown, which the module turns into a SkippedRemoval with the reason), and builds Steps
whose ids follow "<host>/<state id>/<action>". Its args come typed (`states.args`).
"""

from __future__ import annotations

from typing import TypeVar

from reconciler.facts.hostfacts import Fact, HostFacts
from reconciler.plan.steps import (
    Argv,
    Change,
    FileWrite,
    LowState,
    SkippedRemoval,
    Step,
    Subsystem,
    build,
)
from states.base import PlanContext, StateResult

T = TypeVar("T")


class FactUnknown(Exception):
    """A fact a state needs could not be read; the state skips and says why.

    `unread`: the host was asked and could not answer (the fact is unknown), which blocks the
    host; False for a value the facts were never asked for (a path not gathered).
    """

    def __init__(self, reason: str, *, unread: bool = False) -> None:
        self.reason = reason
        self.unread = unread
        super().__init__(reason)


def host_facts(low: LowState, ctx: PlanContext) -> HostFacts:
    facts = ctx.facts.get(low.host)
    if facts is None:
        raise FactUnknown(f"no facts were gathered for {low.host}", unread=True)
    return facts


def known(fact: Fact[T], what: str) -> T:
    """The value of a known fact; FactUnknown (naming `what`) otherwise."""
    if not fact.known or fact.value is None:
        raise FactUnknown(f"{what} unknown: {fact.unknown_reason or 'no value'}", unread=True)
    return fact.value


def tool_missing(facts: HostFacts, tool: str) -> bool:
    """True only when the facts say for sure that `tool` is not installed."""
    if not facts.tools.known or facts.tools.value is None:
        return False
    return facts.tools.value.get(tool) is False


def skip(low: LowState, reason: str, *, unknown: bool = False) -> StateResult:
    """Nothing planned for `low`; `unknown` when a fact it needs could not be read, which keeps
    the whole host from changing (the planner blocks it)."""
    skipped = SkippedRemoval(host=low.host, state_id=low.id, reason=reason, fact_unknown=unknown)
    return StateResult(skipped=(skipped,))


def step_id(low: LowState, action: str) -> str:
    return f"{low.host}/{low.id}/{action}"


def make_step(
    low: LowState,
    action: str,
    subsystem: Subsystem,
    description: str,
    *,
    before: str | None = None,
    after: str | None = None,
    commands: tuple[Argv, ...] = (),
    undo: tuple[Argv, ...] = (),
    writes: tuple[FileWrite, ...] = (),
) -> Step:
    """A step of `low`; the planner fills `require` from the low states' requisites."""
    # Not validated (`build`): every value has its field's type here, and a plan of 10,000
    # hosts makes 70,000 steps.
    return build(
        Step,
        id=step_id(low, action),
        host=low.host,
        state_id=low.id,
        function=low.function,
        subsystem=subsystem,
        phase=low.phase,
        description=description,
        change=build(Change, before=before, after=after),
        commands=commands,
        undo=undo,
        writes=writes,
    )


def strip_host_prefix(address: str | None) -> str | None:
    """Tools print a single address as `A`, `A/32` or (legacy arptables) `0.0.0.0/0` for none."""
    if address is None or address in ("0.0.0.0/0", ""):
        return None
    return address.removesuffix("/32")
