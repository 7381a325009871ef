"""IPVS states for the `ipvsadm` director backend, planned from the parsed `ipvsadm -Sn` facts.

Functions: `ipvs.service_present`, `ipvs.real_server_present` (what the cluster file asks for)
and `ipvs.real_server_absent`, `ipvs.service_absent` (derived by `reconciler.plan.compile_ipvsadm`
from the facts and the host's ledger, so only what shoal created is removed). The command lines
and ledger keys are `states.ipvs_argv`'s.

ipvsadm semantics that shape every command here (research notes, section 3):
- `-E` and `-e` are full replaces: an option left out goes back to its default (scheduler wlc,
  no persistence; weight 1, `-g`), so every edit carries the whole spec.
- DR forces the real server's port to the service port, so we always write them equal.
- A new real server joins at weight 0 and gets its weight in a second command; a leaving one is
  set to weight 0, drained (the executor polls its connection counters), then deleted; a service
  is deleted after its destinations. The table is never cleared as a whole: other people's
  services survive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reconciler.desired.endpoint import endpoint
from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts, IpvsDestination, IpvsService, IpvsTable
from reconciler.plan.steps import Change, DrainWait, LowState, Step
from states.args import Args, LedgerOp, ledger_of
from states.base import PlanContext, StateResult, created
from states.common import skip
from states.ipvs_argv import (
    FWD_FLAG,
    IPVSADM,
    IpvsProtocol,
    dest_argv,
    dest_delete_argv,
    destination_key,
    ipvs_restore_lines,
    observed_spec,
    service_add_argv,
    service_key,
    service_spec,
    svc_argv,
)
from states.kind import Persistence, StateKind

# --- args -----------------------------------------------------------------------------------------


class _ServiceArgs(Args):
    """A virtual service, and the ledger updates of the state (none for a `[[state]]`)."""

    protocol: IpvsProtocol = "tcp"
    vip: str
    port: int


class ServiceArgs(_ServiceArgs):
    scheduler: str = "wlc"
    persistence: int = 0
    ledger: tuple[LedgerOp, ...] = ()


class RealServerArgs(_ServiceArgs):
    address: str
    weight: int = 1
    # shoal-healthd holds it at weight 0 (its check fails): that weight is the checker's.
    held_down: bool = False
    ledger: tuple[LedgerOp, ...] = ()


class RealServerAbsentArgs(_ServiceArgs):
    address: str
    drain_timeout: float = 30.0
    ledger: tuple[LedgerOp, ...] = ()


class ServiceAbsentArgs(_ServiceArgs):
    ledger: tuple[LedgerOp, ...] = ()


# --- looking things up in the facts ---------------------------------------------------------------


def _table(low: LowState, ctx: PlanContext) -> IpvsTable | str:
    facts: HostFacts | None = ctx.facts.get(low.host)
    if facts is None:
        return "no facts for this host"
    if not facts.ipvs.known or facts.ipvs.value is None:
        return f"IPVS table unknown ({facts.ipvs.unknown_reason})"
    return facts.ipvs.value


def _find_service(t: IpvsTable, protocol: str, vip: str, port: int) -> IpvsService | None:
    for s in t.services:
        if (s.protocol, s.address, s.port) == (protocol, vip, port):
            return s
    return None


def _find_dest(
    t: IpvsTable, protocol: str, vip: str, port: int, address: str
) -> IpvsDestination | None:
    for d in t.destinations:
        key = (d.protocol, d.service_address, d.service_port, d.address, d.port)
        if key == (protocol, vip, port, address, port):
            return d
    return None


def _step(low: LowState, action: str, description: str, **kw: Any) -> Step:
    return Step(
        id=f"{low.host}/{low.id}/{action}",
        host=low.host,
        state_id=low.id,
        function=low.function,
        subsystem="ipvs",
        phase=low.phase,
        description=description,
        **kw,
    )


# --- state functions ------------------------------------------------------------------------------


def service_present(low: LowState, args: ServiceArgs, ctx: PlanContext) -> StateResult:
    """`ipvs.service_present`: add the service, or edit it to the whole desired spec."""
    table = _table(low, ctx)
    if isinstance(table, str):
        return skip(low, f"{table}; service not planned", unknown=True)
    protocol, vip, port = args.protocol, args.vip, args.port
    scheduler, persistence = args.scheduler, args.persistence
    name = service_key(protocol, vip, port)
    want = service_spec(scheduler, persistence)
    have = _find_service(table, protocol, vip, port)
    if have is None:
        return StateResult(
            steps=(
                _step(
                    low, "add", f"add IPVS service {name}",
                    change=Change(after=f"{name} {' '.join(want)}"),
                    commands=(service_add_argv(protocol, vip, port, scheduler, persistence),),
                    undo=((IPVSADM, "-D", *svc_argv(protocol, vip, port)),),
                ),
            ),
            claims=created(args.ledger),
        )  # fmt: skip
    observed = observed_spec(have)
    if observed == want:
        return StateResult()
    return StateResult(
        steps=(
            _step(
                low, "edit", f"edit IPVS service {name} (full spec)",
                change=Change(
                    before=f"{name} {' '.join(observed)}", after=f"{name} {' '.join(want)}"
                ),
                commands=((IPVSADM, "-E", *svc_argv(protocol, vip, port), *want),),
                undo=((IPVSADM, "-E", *svc_argv(protocol, vip, port), *observed),),
            ),
        )
    )  # fmt: skip


def real_server_present(low: LowState, args: RealServerArgs, ctx: PlanContext) -> StateResult:
    """`ipvs.real_server_present`: join at weight 0, then the weight; or edit to it."""
    table = _table(low, ctx)
    if isinstance(table, str):
        return skip(low, f"{table}; real server not planned", unknown=True)
    protocol, vip, port, address = args.protocol, args.vip, args.port, args.address
    weight = 0 if args.held_down else args.weight
    name = destination_key(protocol, vip, port, address)
    have = _find_dest(table, protocol, vip, port, address)
    if have is None:
        add = _step(
            low, "add", f"add real server {name} at weight 0",
            change=Change(after=f"{name} -g -w 0"),
            commands=(dest_argv("-a", protocol, vip, port, address, 0),),
            undo=(dest_delete_argv(protocol, vip, port, address),),
        )  # fmt: skip
        if weight == 0:
            return StateResult(steps=(add,), claims=created(args.ledger))
        ramp = _step(
            low, "weight", f"raise real server {name} to weight {weight}",
            change=Change(before=f"{name} -g -w 0", after=f"{name} -g -w {weight}"),
            commands=(dest_argv("-e", protocol, vip, port, address, weight),),
            undo=(dest_argv("-e", protocol, vip, port, address, 0),),
            require=(add.id,),
        )  # fmt: skip
        return StateResult(steps=(add, ramp), claims=created(args.ledger))
    if have.weight == weight and have.forward == "route":
        return StateResult()
    old = f"{name} {FWD_FLAG[have.forward]} -w {have.weight}"
    return StateResult(
        steps=(
            _step(
                low, "edit", f"set real server {name} to -g -w {weight}",
                change=Change(before=old, after=f"{name} -g -w {weight}"),
                commands=(dest_argv("-e", protocol, vip, port, address, weight),),
                undo=(dest_argv("-e", protocol, vip, port, address, have.weight, have.forward),),
            ),
        )
    )  # fmt: skip


def real_server_absent(
    low: LowState, args: RealServerAbsentArgs, ctx: PlanContext
) -> StateResult:
    """`ipvs.real_server_absent`: weight 0, drain (up to `drain_timeout`), then `-d`."""
    table = _table(low, ctx)
    if isinstance(table, str):
        return skip(low, f"{table}; removal not planned", unknown=True)
    protocol, vip, port, address = args.protocol, args.vip, args.port, args.address
    timeout = args.drain_timeout
    name = destination_key(protocol, vip, port, address)
    have = _find_dest(table, protocol, vip, port, address)
    if have is None:
        return StateResult()
    fwd = have.forward
    drain = _step(
        low, "drain", f"drain real server {name} (weight 0, up to {timeout:g}s)",
        change=Change(before=f"{name} {FWD_FLAG[fwd]} -w {have.weight}", after=f"{name} drained"),
        # The method stays what it is: `-e` without it would switch the destination to -g.
        commands=(dest_argv("-e", protocol, vip, port, address, 0, fwd),),
        undo=(dest_argv("-e", protocol, vip, port, address, have.weight, fwd),),
        drain=DrainWait(
            service=service_key(protocol, vip, port),
            real_server=endpoint(address, port),
            timeout=timeout,
        ),
    )  # fmt: skip
    delete = _step(
        low, "delete", f"delete real server {name}",
        change=Change(before=f"{name} drained", after=None),
        commands=(dest_delete_argv(protocol, vip, port, address),),
        undo=(dest_argv("-a", protocol, vip, port, address, 0, fwd),),
        require=(drain.id,),
    )  # fmt: skip
    return StateResult(steps=(drain, delete))


def service_absent(low: LowState, args: ServiceAbsentArgs, ctx: PlanContext) -> StateResult:
    """`ipvs.service_absent`: `-D` (its destinations are drained by their own absent states)."""
    table = _table(low, ctx)
    if isinstance(table, str):
        return skip(low, f"{table}; removal not planned", unknown=True)
    protocol, vip, port = args.protocol, args.vip, args.port
    have = _find_service(table, protocol, vip, port)
    if have is None:
        return StateResult()
    name = service_key(protocol, vip, port)
    observed = observed_spec(have)
    return StateResult(
        steps=(
            _step(
                low, "delete", f"delete IPVS service {name}",
                change=Change(before=f"{name} {' '.join(observed)}", after=None),
                commands=((IPVSADM, "-D", *svc_argv(protocol, vip, port)),),
                undo=((IPVSADM, "-A", *svc_argv(protocol, vip, port), *observed),),
            ),
        )
    )  # fmt: skip


def _restore_lines(host: str, args: Sequence[ServiceArgs], desired: Desired) -> list[str]:
    """The director's whole IPVS table, once; an entry that exists already fails harmlessly."""
    if not args:
        return []
    return [f"{line} 2>/dev/null || true" for line in ipvs_restore_lines(desired, host)]


SERVICE_PRESENT = StateKind(
    "ipvs.service_present", ServiceArgs, service_present,
    persist=Persistence(60, _restore_lines), ledger=ledger_of,
)  # fmt: skip
REAL_SERVER_PRESENT = StateKind(
    "ipvs.real_server_present", RealServerArgs, real_server_present, ledger=ledger_of
)
REAL_SERVER_ABSENT = StateKind(
    "ipvs.real_server_absent", RealServerAbsentArgs, real_server_absent,
    ledger=ledger_of, removes_only=True,
)  # fmt: skip
SERVICE_ABSENT = StateKind(
    "ipvs.service_absent", ServiceAbsentArgs, service_absent, ledger=ledger_of, removes_only=True
)
