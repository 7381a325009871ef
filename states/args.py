"""What a state's arguments are: the `Args` base model, validation, and the per-plan cache.

Every state kind declares a pydantic model of its low state's args (`Args`: frozen, unknown keys
refused). `parse_args` validates a low state's args against it; bad args from a `[[state]]`
become DesiredStateInvalid, located at the low state's origin. `ArgsCache` validates each
distinct argument set once per plan. `LedgerOp` is the ledger update a director state carries.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from reconciler.errors import ConfigIssue, DesiredStateInvalid
from reconciler.plan.steps import LowState

A = TypeVar("A", bound=BaseModel)


class Args(BaseModel):
    """Base of every state's argument model: frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class LedgerOp(Args):
    """One ledger update a director state carries; the director compiler knows the keys.

    `remove` applies once the state's steps succeeded (or it was in sync). `add` names what the
    state would own: it enters the ledger only as the state's claims when it creates the object
    (`states.base.created`), or when the host adopts and finds it in sync
    (`reconciler.plan.adoption`): without adoption, an object found in place is never shoal's."""

    function: str
    op: Literal["add", "remove", "replace"]
    keys: tuple[str, ...]


class CarriesLedger(Protocol):
    """Args of a director kind: they carry the ledger updates of their state."""

    @property
    def ledger(self) -> tuple[LedgerOp, ...]: ...


def ledger_of(args: CarriesLedger) -> tuple[LedgerOp, ...]:
    """`StateKind.ledger` of a director kind."""
    return args.ledger


def low_args(args: Args) -> dict[str, Any]:
    """A model as a low state's args: the fields that were set, in field order, as plain data."""
    return args.model_dump(mode="json", exclude_unset=True)


def parse_args(model: type[A], low: LowState) -> A:
    """Validate a low state's args; a bad `[[state]]` is an invalid desired state."""
    try:
        return model.model_validate(low.args)
    except ValidationError as exc:
        # origin is "compiled" or "<file>:<key path>" for a [[state]] of a cluster file
        file, _, where = low.origin.partition(":")
        issues = [
            ConfigIssue(
                file=file,
                key_path=".".join(str(p) for p in (where or low.id, "args", *err["loc"])),
                message=f"{low.function} {low.id!r} on {low.host}: {err['msg']}",
            )
            for err in exc.errors()
        ]
        raise DesiredStateInvalid(issues) from None


_SCALARS = frozenset({str, int, float, bool, type(None)})


def freeze(value: Any) -> Hashable:
    """A hashable form of TOML-like data that tells 1, 1.0, True and "1" apart."""
    cls = value.__class__
    if cls in _SCALARS:
        return (cls, value)
    if cls is dict:
        return (dict, tuple(
            (k.__class__, k, v.__class__, v if v.__class__ in _SCALARS else freeze(v))
            for k, v in value.items()
        ))  # fmt: skip
    if cls is list or cls is tuple:
        return (cls, tuple(freeze(v) for v in value))
    raise TypeError(f"not cacheable: {cls.__name__}")



class ArgsCache:
    """`parse_args`, validated once per distinct (model, args) for as long as one plan lives.

    Planning 10,000 real servers validates the same few argument sets (the ARP sysctls, a VIP on
    lo, the packages) tens of thousands of times, in the compiler (ledger keys, the boot form)
    and in the planner; the models are frozen and their validators pure, so one validated
    instance serves every low state with equal args. Failures are never kept: their message
    names the low state.
    """

    __slots__ = ("_by_identity", "_parsed")

    def __init__(self) -> None:
        self._parsed: dict[tuple[type[BaseModel], Hashable], BaseModel] = {}
        # (model, id(args dict)) -> (that dict, its parsed form). Low states compiled from one
        # template share their args dict: a hit here skips even freezing the args. The entry
        # holds the dict, so its id cannot be reused by another dict while the cache lives.
        self._by_identity: dict[tuple[type[BaseModel], int], tuple[object, BaseModel]] = {}

    def parse(self, model: type[A], low: LowState) -> A:
        args = low.args
        same = self._by_identity.get((model, id(args)))
        if same is not None and same[0] is args:
            return same[1]  # type: ignore[return-value]
        try:
            key = (model, freeze(args))
        except TypeError:
            return parse_args(model, low)
        hit = self._parsed.get(key)
        if hit is None:
            hit = parse_args(model, low)
            self._parsed[key] = hit
        self._by_identity[(model, id(args))] = (args, hit)
        return hit  # type: ignore[return-value]
