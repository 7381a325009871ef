"""What every state function is: a pure map from one low state and the facts to Steps.

A state function never does I/O. It receives the low state (id, function, args, requisites) and
a PlanContext holding the validated desired state and every host's facts, and returns the steps
that bring the host from its facts to the low state, or none when it is in sync. A removal that
depends on an unknown fact is not planned: it is returned as a SkippedRemoval with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.steps import LowState, SkippedRemoval, Step


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


# --- parsed-argument cache ------------------------------------------------------------------------

_A = TypeVar("_A", bound=BaseModel)
# (model, frozen args) -> the validated args. Planning 10,000 real servers validates the same few
# argument sets (the ARP sysctls, a VIP on lo, the packages) tens of thousands of times; the
# models are frozen and their validators pure, so one validated instance serves every low state
# with equal args. Failures are never cached: their message names the low state.
_ARGS_CACHE: dict[tuple[type[BaseModel], Hashable], BaseModel] = {}
_ARGS_CACHE_MAX = 8192


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _freeze(value: Any) -> Hashable:
    """A hashable form of TOML-like data that tells 1, 1.0, True and "1" apart."""
    cls = value.__class__
    if cls in _SCALARS:
        return (cls, value)
    if cls is dict:
        return (dict, tuple(
            (k.__class__, k, v.__class__, v if v.__class__ in _SCALARS else _freeze(v))
            for k, v in value.items()
        ))  # fmt: skip
    if cls is list or cls is tuple:
        return (cls, tuple(_freeze(v) for v in value))
    raise TypeError(f"not cacheable: {cls.__name__}")


def cached_args(model: type[_A], low: LowState) -> _A:
    """`states.common.parse_args(model, low)`, validated once per distinct args."""
    from states.common import parse_args  # states.common imports this module

    try:
        key = (model, _freeze(low.args))
    except TypeError:
        return parse_args(model, low)
    hit = _ARGS_CACHE.get(key)
    if hit is not None:
        return hit  # type: ignore[return-value]
    parsed = parse_args(model, low)
    if len(_ARGS_CACHE) >= _ARGS_CACHE_MAX:
        _ARGS_CACHE.clear()
    _ARGS_CACHE[key] = parsed
    return parsed
