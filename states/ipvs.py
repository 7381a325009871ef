"""IPVS states for the `ipvsadm` director backend, planned from the parsed `ipvsadm -Sn` facts.

Functions: `ipvs.service_present`, `ipvs.real_server_present` (what the cluster file asks for)
and `ipvs.real_server_absent`, `ipvs.service_absent` (derived by `reconciler.plan.compile_director`
from the facts and the host's ledger, so only what shoal created is removed).

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

import shlex
from collections.abc import Mapping
from typing import Any

from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts, IpvsDestination, IpvsService, IpvsTable
from reconciler.plan.steps import Argv, Change, DrainWait, LowState, SkippedRemoval, Step
from states.base import PlanContext, StateResult

IPVSADM = "ipvsadm"
DEFAULT_PERSISTENCE_MASK = "255.255.255.255"
_PROTO_FLAG = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}
_FWD_FLAG = {"route": "-g", "tunnel": "-i", "masq": "-m"}


# --- keys and argv builders -----------------------------------------------------------------------


def service_key(protocol: str, vip: str, port: int) -> str:
    """Ledger key of a virtual service, e.g. `tcp 10.77.0.100:80`."""
    return f"{protocol} {vip}:{port}"


def destination_key(protocol: str, vip: str, port: int, address: str) -> str:
    """Ledger key of a destination, e.g. `tcp 10.77.0.100:80 10.77.0.21:80` (DR: same port)."""
    return f"{service_key(protocol, vip, port)} {address}:{port}"


def _svc_argv(protocol: str, vip: str, port: int) -> Argv:
    return (_PROTO_FLAG[protocol], f"{vip}:{port}")


def service_spec(scheduler: str, persistence: int | None) -> Argv:
    """Every service attribute shoal manages, for `-A` and `-E` alike."""
    spec: Argv = ("-s", scheduler)
    if persistence:
        spec += ("-p", str(persistence))
    return spec


def _observed_spec(svc: IpvsService) -> Argv:
    """The full spec of a service as the facts show it (for undo of `-E`/`-D`)."""
    spec = service_spec(svc.scheduler, svc.persistence)
    if svc.persistence and svc.netmask and svc.netmask != DEFAULT_PERSISTENCE_MASK:
        spec += ("-M", svc.netmask)
    if svc.flags:
        spec += ("-b", ",".join(svc.flags))
    return spec


def service_add_argv(protocol: str, vip: str, port: int, scheduler: str, persistence: int) -> Argv:
    return (IPVSADM, "-A", *_svc_argv(protocol, vip, port), *service_spec(scheduler, persistence))


def dest_argv(
    op: str, protocol: str, vip: str, port: int, address: str, weight: int, fwd: str = "route"
) -> Argv:
    """`-a`/`-e` with the full destination spec; the port is the service port (DR)."""
    return (
        IPVSADM, op, *_svc_argv(protocol, vip, port),
        "-r", f"{address}:{port}", _FWD_FLAG[fwd], "-w", str(weight),
    )  # fmt: skip


def dest_delete_argv(protocol: str, vip: str, port: int, address: str) -> Argv:
    return (IPVSADM, "-d", *_svc_argv(protocol, vip, port), "-r", f"{address}:{port}")


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


def _skip(low: LowState, reason: str, *, unknown: bool = False) -> StateResult:
    skipped = SkippedRemoval(host=low.host, state_id=low.id, reason=reason, fact_unknown=unknown)
    return StateResult(skipped=(skipped,))


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


def _svc_args(args: Mapping[str, Any]) -> tuple[str, str, int]:
    return str(args.get("protocol", "tcp")), str(args["vip"]), int(args["port"])


# --- state functions ------------------------------------------------------------------------------


def service_present(low: LowState, ctx: PlanContext) -> StateResult:
    """`ipvs.service_present`: args protocol, vip, port, scheduler, persistence."""
    table = _table(low, ctx)
    if isinstance(table, str):
        return _skip(low, f"{table}; service not planned", unknown=True)
    protocol, vip, port = _svc_args(low.args)
    scheduler = str(low.args.get("scheduler", "wlc"))
    persistence = int(low.args.get("persistence", 0))
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
                    undo=((IPVSADM, "-D", *_svc_argv(protocol, vip, port)),),
                ),
            )
        )  # fmt: skip
    observed = _observed_spec(have)
    if observed == want:
        return StateResult()
    return StateResult(
        steps=(
            _step(
                low, "edit", f"edit IPVS service {name} (full spec)",
                change=Change(
                    before=f"{name} {' '.join(observed)}", after=f"{name} {' '.join(want)}"
                ),
                commands=((IPVSADM, "-E", *_svc_argv(protocol, vip, port), *want),),
                undo=((IPVSADM, "-E", *_svc_argv(protocol, vip, port), *observed),),
            ),
        )
    )  # fmt: skip


def real_server_present(low: LowState, ctx: PlanContext) -> StateResult:
    """`ipvs.real_server_present`: args protocol, vip, port, address, weight."""
    table = _table(low, ctx)
    if isinstance(table, str):
        return _skip(low, f"{table}; real server not planned", unknown=True)
    protocol, vip, port = _svc_args(low.args)
    address = str(low.args["address"])
    weight = int(low.args.get("weight", 1))
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
            return StateResult(steps=(add,))
        ramp = _step(
            low, "weight", f"raise real server {name} to weight {weight}",
            change=Change(before=f"{name} -g -w 0", after=f"{name} -g -w {weight}"),
            commands=(dest_argv("-e", protocol, vip, port, address, weight),),
            undo=(dest_argv("-e", protocol, vip, port, address, 0),),
            require=(add.id,),
        )  # fmt: skip
        return StateResult(steps=(add, ramp))
    if have.weight == weight and have.forward == "route":
        return StateResult()
    old = f"{name} {_FWD_FLAG[have.forward]} -w {have.weight}"
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


def real_server_absent(low: LowState, ctx: PlanContext) -> StateResult:
    """`ipvs.real_server_absent`: weight 0, drain, then `-d`. Args as present + drain_timeout."""
    table = _table(low, ctx)
    if isinstance(table, str):
        return _skip(low, f"{table}; removal not planned", unknown=True)
    protocol, vip, port = _svc_args(low.args)
    address = str(low.args["address"])
    timeout = float(low.args.get("drain_timeout", 30.0))
    name = destination_key(protocol, vip, port, address)
    have = _find_dest(table, protocol, vip, port, address)
    if have is None:
        return StateResult()
    fwd = have.forward
    drain = _step(
        low, "drain", f"drain real server {name} (weight 0, up to {timeout:g}s)",
        change=Change(before=f"{name} {_FWD_FLAG[fwd]} -w {have.weight}", after=f"{name} drained"),
        # The method stays what it is: `-e` without it would switch the destination to -g.
        commands=(dest_argv("-e", protocol, vip, port, address, 0, fwd),),
        undo=(dest_argv("-e", protocol, vip, port, address, have.weight, fwd),),
        drain=DrainWait(
            service=service_key(protocol, vip, port),
            real_server=f"{address}:{port}",
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


def service_absent(low: LowState, ctx: PlanContext) -> StateResult:
    """`ipvs.service_absent`: `-D` (its destinations are drained by their own absent states)."""
    table = _table(low, ctx)
    if isinstance(table, str):
        return _skip(low, f"{table}; removal not planned", unknown=True)
    protocol, vip, port = _svc_args(low.args)
    have = _find_service(table, protocol, vip, port)
    if have is None:
        return StateResult()
    name = service_key(protocol, vip, port)
    observed = _observed_spec(have)
    return StateResult(
        steps=(
            _step(
                low, "delete", f"delete IPVS service {name}",
                change=Change(before=f"{name} {' '.join(observed)}", after=None),
                commands=((IPVSADM, "-D", *_svc_argv(protocol, vip, port)),),
                undo=((IPVSADM, "-A", *_svc_argv(protocol, vip, port), *observed),),
            ),
        )
    )  # fmt: skip


# --- boot restore ---------------------------------------------------------------------------------


def ipvs_restore_commands(desired: Desired, director: str) -> list[Argv]:
    """Ordered ipvsadm argv that rebuild this director's IPVS services at boot.

    Services first (`-A`, full spec), then their destinations (`-a -g -w W`, weight 0 kept for
    draining ones). Every command may fail with "already exists" when the table survived; the
    restore script should go on (it must never clear the whole table).
    """
    out: list[Argv] = []
    for cname in sorted(desired.clusters):
        cl = desired.clusters[cname]
        if cl.cluster.director != "ipvsadm" or director not in cl.cluster.directors:
            continue
        for svc in sorted(cl.services, key=lambda s: (s.protocol, s.vip, s.port)):
            out.append(
                service_add_argv(svc.protocol, svc.vip, svc.port, svc.scheduler, svc.persistence)
            )
            for rs in sorted(svc.real_servers, key=lambda r: r.host):
                address = desired.inventory.hosts[rs.host].address
                out.append(dest_argv("-a", svc.protocol, svc.vip, svc.port, address, rs.weight))
    return out


def ipvs_restore_lines(desired: Desired, director: str) -> list[str]:
    """The same as `ipvs_restore_commands`, each shell-quoted (for a restore script)."""
    return [shlex.join(argv) for argv in ipvs_restore_commands(desired, director)]
