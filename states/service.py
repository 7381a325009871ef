"""`service.running`, `service.enabled` / `service.disabled`: systemd units (`systemctl`).

`service.running` starts a stopped unit; a `watch` requisite on it adds a reload or restart
step (`mod_watch`, Salt's name) when a watched state changes something, e.g. a config file.
`service.enabled` makes a unit start at boot (shoal-restore.service), decided from the
`multi-user.target.wants` link in the files facts, so it works where systemd is not running (lab
hosts); its absent form, `service.disabled`, acts only on units the ledger lists.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from reconciler.plan.steps import LowState
from states.args import Args
from states.base import Claim, PlanContext, StateResult
from states.common import FactUnknown, host_facts, known, make_step, skip
from states.kind import Ownership, StateKind

ENABLED = "service.enabled"
DEFAULT_TARGET = "multi-user.target"
UnitName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,250}$")]


class RunningArgs(Args):
    name: UnitName
    reload: bool = False  # on a watched change: reload (True) or restart (False)


class EnabledArgs(Args):
    name: UnitName
    wanted_by: Literal["multi-user.target"] = "multi-user.target"


class DisabledArgs(Args):
    key: UnitName


def ledger_key(args: EnabledArgs) -> str:
    return args.name


def _lookup(table: dict[str, bool], name: str) -> bool | None:
    """Facts may name a unit with or without its `.service` suffix."""
    for candidate in (name, name.removesuffix(".service"), f"{name}.service"):
        if candidate in table:
            return table[candidate]
    return None


def running(low: LowState, args: RunningArgs, ctx: PlanContext) -> StateResult:
    try:
        active = _lookup(known(host_facts(low, ctx).services, "services"), args.name)
    except FactUnknown as exc:
        return skip(low, f"cannot plan {args.name}: {exc.reason}", unknown=exc.unread)
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


def mod_watch(low: LowState, args: RunningArgs, ctx: PlanContext) -> StateResult:
    """The extra step of a `watch`: reload or restart, because something it watches changed.

    A restart has nothing to undo, but a rollback restores the watched file after it, so the
    daemon must pick the old file up again (`after_rollback`): restarted (or reloaded) when it
    was running before the plan, even if this restart failed and left it down; when it was
    stopped, `running`'s start step is undone by a stop and nothing more runs; when the facts
    do not say, `try-restart` restarts it only if it runs.
    """
    verb = "reload" if args.reload else "restart"
    facts = ctx.facts.get(low.host)
    was_active = None
    if facts is not None and facts.services.known and facts.services.value is not None:
        was_active = _lookup(facts.services.value, args.name)
    again: tuple[tuple[str, ...], ...]
    if was_active is None:
        again = (("systemctl", "try-reload-or-restart" if args.reload else "try-restart",
                  args.name),)  # fmt: skip
    elif was_active:
        again = (("systemctl", "reload-or-restart" if args.reload else "restart", args.name),)
    else:
        again = ()
    step = make_step(
        low,
        verb,
        "service",
        f"{verb} {args.name}: a watched state changed",
        commands=(("systemctl", verb, args.name),),
    )
    return StateResult(steps=(step.model_copy(update={"after_rollback": again}),))


def wants_link(name: str, wanted_by: str = DEFAULT_TARGET) -> str:
    """The symlink `systemctl enable` creates; it also works where systemd is not running."""
    return f"/etc/systemd/system/{wanted_by}.wants/{name}"


def _is_enabled(low: LowState, ctx: PlanContext, name: str, wanted_by: str) -> bool:
    files = known(host_facts(low, ctx).files, "files")
    info = files.get(wants_link(name, wanted_by))
    if info is None:
        raise FactUnknown(f"{wants_link(name, wanted_by)} was not gathered")
    return info.exists


def enabled(low: LowState, args: EnabledArgs, ctx: PlanContext) -> StateResult:
    try:
        state = _is_enabled(low, ctx, args.name, args.wanted_by)
    except FactUnknown as exc:
        return skip(low, f"cannot plan enabling {args.name}: {exc.reason}", unknown=exc.unread)
    if state:
        return StateResult()
    step = make_step(
        low,
        "enable",
        "service",
        f"enable {args.name} at boot ({args.wanted_by})",
        before="disabled",
        after="enabled",
        commands=(("systemctl", "enable", args.name),),
        undo=(("systemctl", "disable", args.name),),
    )
    return StateResult(steps=(step,), claims=(Claim(ENABLED, args.name),))


def disabled(low: LowState, args: DisabledArgs, ctx: PlanContext) -> StateResult:
    name = args.key
    try:
        state = _is_enabled(low, ctx, name, DEFAULT_TARGET)
    except FactUnknown as exc:
        return skip(low, f"not disabling {name}: {exc.reason}", unknown=exc.unread)
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


RUNNING = StateKind("service.running", RunningArgs, running, watch=mod_watch)
ENABLED_KIND = StateKind(ENABLED, EnabledArgs, enabled,
                         owns=Ownership(ledger_key, "service.disabled", 50))  # fmt: skip
DISABLED = StateKind("service.disabled", DisabledArgs, disabled, removes_only=True)
