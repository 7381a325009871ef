"""A state kind: everything shoal knows about one state function, in one registered object.

A `StateKind` names its function (`sysctl.present`), its args model, the function that plans it,
and what else is particular to it: the `mod_watch` reaction to a watched change, how the ledger
keys the objects it creates and which kind removes them (`Ownership`), and its boot-time form
(`Persistence`: lines of the restore script, a boot file). The compiler, the boot form and the
planner ask the kind; none of them switches on a function name. `states.registry` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from reconciler.desired.models import Desired
from reconciler.plan.steps import LowState
from states.args import Args, ArgsCache, LedgerOp, parse_args
from states.base import PlanContext, StateResult

A = TypeVar("A", bound=Args)

PlanFunction = Callable[[LowState, A, PlanContext], StateResult]


@dataclass(frozen=True, slots=True)
class Ownership(Generic[A]):
    """How the ledger names a present form's object, and the function that removes it.

    `removal_rank` orders removals on one host: lower goes first (a VIP before the ARP
    suppression that guards it, a unit disabled before its file goes).
    """

    key: Callable[[A], str]
    absent: str
    removal_rank: int


@dataclass(frozen=True, slots=True)
class BootFile:
    """A file the boot form writes besides the restore script (e.g. /etc/sysctl.d/...)."""

    state_id: str
    path: str
    content: str
    mode: str = "0644"


@dataclass(frozen=True, slots=True)
class Persistence(Generic[A]):
    """What brings a kind's runtime objects back after a reboot.

    `order` places the kind's lines in the restore script (lower first: ARP suppression before
    the VIPs). `lines` gets every low state of the kind on one host, in compile order, with its
    args, so a kind that restores a whole table writes it once. `boot_file`, if any, is a file
    the kind's objects are read from at boot instead.
    """

    order: int
    lines: Callable[[str, Sequence[A], Desired], list[str]]
    boot_file: Callable[[Sequence[A]], BootFile | None] | None = None


# The `Persistence.lines` functions that read neither the host nor the desired state (those
# `each` makes): hosts with equal low states get equal lines, so the boot form is made once.
HOST_FREE_LINES: set[object] = set()


def each(line: Callable[[A], list[str]]) -> Callable[[str, Sequence[A], Desired], list[str]]:
    """`Persistence.lines` for a kind whose every low state restores on its own."""

    def lines(host: str, args: Sequence[A], desired: Desired) -> list[str]:
        return [text for a in args for text in line(a)]

    HOST_FREE_LINES.add(lines)
    return lines


@dataclass(frozen=True, slots=True)
class StateKind(Generic[A]):
    function: str
    args: type[A]
    plan: PlanFunction[A]
    # The extra step of a `watch` requisite when a watched state changed (Salt's mod_watch).
    watch: PlanFunction[A] | None = None
    owns: Ownership[A] | None = None
    persist: Persistence[A] | None = None
    # The ledger updates its args carry (director kinds: the compiler knows what they own).
    ledger: Callable[[A], tuple[LedgerOp, ...]] | None = None
    # An absent form: it only takes away. A host with nothing but these wants nothing of shoal's
    # any more, so its own files go too (reconciler.plan.leftovers).
    removes_only: bool = False

    def parse(self, low: LowState, cache: ArgsCache | None = None) -> A:
        """The low state's args as this kind's model; DesiredStateInvalid if they do not fit."""
        if low.function != self.function:
            raise ValueError(f"{low.id}: a {low.function} low state is not a {self.function}")
        return parse_args(self.args, low) if cache is None else cache.parse(self.args, low)

    def run(self, low: LowState, ctx: PlanContext) -> StateResult:
        return self.plan(low, self.parse(low, ctx.args), ctx)

    def run_watch(self, low: LowState, ctx: PlanContext) -> StateResult | None:
        """The mod_watch result, or None when this kind does not react to a watch."""
        if self.watch is None:
            return None
        return self.watch(low, self.parse(low, ctx.args), ctx)

    def ledger_key(self, low: LowState, cache: ArgsCache | None = None) -> str | None:
        """The ledger key of the object a present form creates; None for other kinds."""
        if self.owns is None:
            return None
        return self.owns.key(self.parse(low, cache))


AnyKind = StateKind[Any]
