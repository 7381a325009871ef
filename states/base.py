"""What every state function is: a pure map from a low state, its typed args and the facts to Steps.

A state function never does I/O. It receives the low state (id, function, requisites), its args
validated against the kind's `Args` model, and a PlanContext holding the validated desired state,
every host's facts and the plan's args cache; it returns the steps that bring the host from its
facts to the low state, or none when it is in sync. A removal that depends on an unknown fact is
not planned: it is returned as a SkippedRemoval with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.steps import SkippedRemoval, Step
from states.args import ArgsCache, LedgerOp


@dataclass(frozen=True, slots=True)
class PlanContext:
    desired: Desired
    facts: Mapping[str, HostFacts]
    # One plan's validated args; the compiler that made the low states shares it.
    args: ArgsCache = field(default_factory=ArgsCache)


@dataclass(frozen=True, slots=True)
class Claim:
    """One ledger entry a result adds (`claims`) or drops (`releases`).

    `function` is the present form that owns the object (e.g. "addr.present"), `key` its
    canonical key; `original` is a sysctl's value from before shoal changed it.
    """

    function: str
    key: str
    original: str | None = None


@dataclass(frozen=True, slots=True)
class StateResult:
    steps: tuple[Step, ...] = ()
    skipped: tuple[SkippedRemoval, ...] = field(default_factory=tuple)
    # Objects this result creates (recorded in the ledger) or removes/finds gone (dropped).
    claims: tuple[Claim, ...] = ()
    releases: tuple[Claim, ...] = ()


def created(ops: tuple[LedgerOp, ...], keys: tuple[str, ...] | None = None) -> tuple[Claim, ...]:
    """The claims of a director state that creates the objects its `add` ops name (`keys`:
    only those). An add op is what the state would own; only what the state makes, or what an
    adopting host hands over (reconciler.plan.adoption), enters the ledger."""
    return tuple(
        Claim(op.function, key)
        for op in ops
        if op.op == "add"
        for key in op.keys
        if keys is None or key in keys
    )
