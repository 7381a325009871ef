"""What every state function is: a pure map from one low state and the facts to Steps.

A state function never does I/O. It receives the low state (id, function, args, requisites) and
a PlanContext holding the validated desired state and every host's facts, and returns the steps
that bring the host from its facts to the low state, or none when it is in sync. A removal that
depends on an unknown fact is not planned: it is returned as a SkippedRemoval with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reconciler.hostfacts import HostFacts
from reconciler.models import Desired
from reconciler.steps import LowState, SkippedRemoval, Step


@dataclass(frozen=True, slots=True)
class PlanContext:
    desired: Desired
    facts: Mapping[str, HostFacts]


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


StateFunction = Callable[[LowState, PlanContext], StateResult]
