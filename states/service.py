"""`service.running`, `service.enabled` / `service.disabled`: systemd units (`systemctl`).

`service.running` starts a stopped unit; a `watch` requisite on it adds a reload or restart
step (`mod_watch`, Salt's name) when a watched state changes something, e.g. a config file.
`service.enabled` makes a unit start at boot (shoal-restore.service); its absent form,
`service.disabled`, acts only on units the ledger lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field

from reconciler.steps import LowState
from states.base import Claim, PlanContext, StateResult
from states.common import Args, FactUnknown, host_facts, known, make_step, parse_args, skip

ENABLED = "service.enabled"
UnitName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,250}$")]


class RunningArgs(Args):
    name: UnitName
    reload: bool = False  # on a watched change: reload (True) or restart (False)


class EnabledArgs(Args):
    name: UnitName


class DisabledArgs(Args):
    key: UnitName


def ledger_key(args: Mapping[str, Any]) -> str:
    return EnabledArgs.model_validate(args).name


def _lookup(table: dict[str, bool], name: str) -> bool | None:
    """Facts may name a unit with or without its `.service` suffix."""
    for candidate in (name, name.removesuffix(".service"), f"{name}.service"):
        if candidate in table:
            return table[candidate]
    return None


def running(low: LowState, ctx: PlanContext) -> StateResult:
    args = parse_args(RunningArgs, low)
    try:
        active = _lookup(known(host_facts(low, ctx).services, "services"), args.name)
    except FactUnknown as exc:
        return skip(low, f"cannot plan {args.name}: {exc.reason}")
    if active is None:
        return skip(low, f"cannot plan {args.name}: its state was not gathered")
    if active:
        return StateResult()
    step = make_step(
        low,
        "start",
        "service",
        f"start {args.name}",
        before="inactive",
        after="active",
        commands=(("systemctl", "start", args.name),),
        undo=(("systemctl", "stop", args.name),),
    )
    return StateResult(steps=(step,))


def mod_watch(low: LowState, ctx: PlanContext) -> StateResult:
    """The extra step of a `watch`: reload or restart, because something it watches changed."""
    args = parse_args(RunningArgs, low)
    verb = "reload" if args.reload else "restart"
    step = make_step(
        low,
        verb,
        "service",
        f"{verb} {args.name}: a watched state changed",
        commands=(("systemctl", verb, args.name),),
        # Rolling back the watched change and running this again restores the old behaviour;
        # a restart itself has nothing to undo.
    )
    return StateResult(steps=(step,))


def enabled(low: LowState, ctx: PlanContext) -> StateResult:
    args = parse_args(EnabledArgs, low)
    try:
        state = _lookup(known(host_facts(low, ctx).services_enabled, "enabled units"), args.name)
    except FactUnknown as exc:
        return skip(low, f"cannot plan enabling {args.name}: {exc.reason}")
    if state:
        return StateResult()
    step = make_step(
        low,
        "enable",
        "service",
        f"enable {args.name} at boot",
        before="disabled",
        after="enabled",
        commands=(("systemctl", "enable", args.name),),
        undo=(("systemctl", "disable", args.name),),
    )
    return StateResult(steps=(step,), claims=(Claim(ENABLED, args.name),))


def disabled(low: LowState, ctx: PlanContext) -> StateResult:
    name = parse_args(DisabledArgs, low).key
    try:
        state = _lookup(known(host_facts(low, ctx).services_enabled, "enabled units"), name)
    except FactUnknown as exc:
        return skip(low, f"not disabling {name}: {exc.reason}")
    release = (Claim(ENABLED, name),)
    if not state:
        return StateResult(releases=release)
    step = make_step(
        low,
        "disable",
        "service",
        f"disable {name} (shoal enabled it)",
        before="enabled",
        after="disabled",
        commands=(("systemctl", "disable", name),),
        undo=(("systemctl", "enable", name),),
    )
    return StateResult(steps=(step,), releases=release)
