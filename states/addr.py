"""`addr.present` / `addr.absent`: one IPv4 or IPv6 address on one interface (`ip addr add|del`).

An IPv4 VIP is added as /32: on `lo` for the sysctl ARP method, on the client-facing interface
for the arptables and nft-arp methods (whose rules already silence it). An IPv6 address is added
with `nodad`: duplicate address detection would hold a VIP tentative (unusable) for a second,
and fail it for good while the other director still answers for it during a takeover.
`ip addr add` sends no gratuitous ARP or unsolicited neighbour advertisement (a director's
`announce` adds one: `arping -U`, or states.nd_announce for IPv6), and neither add nor del is
idempotent, so both are planned only from the facts.
"""

from __future__ import annotations

import re
import shlex

from pydantic import Field, ValidationError, model_validator

from reconciler.desired.models import InterfaceName, IPAddress, family_of
from reconciler.plan.steps import LowState
from states.args import Args
from states.base import Claim, PlanContext, StateResult
from states.common import FactUnknown, host_facts, known, make_step, skip
from states.kind import Ownership, Persistence, StateKind, each
from states.nd_announce import announce_argv

FUNCTION = "addr.present"
_KEY_RE = re.compile(
    r"^(?P<address>[0-9a-f.:]+)/(?P<prefix>[0-9]{1,3}) dev (?P<interface>\S+)$"
)


class AddrArgs(Args):
    address: IPAddress
    prefix: int = Field(default=32, ge=1, le=128)
    interface: InterfaceName
    # A director taking over a VIP tells the segment at once; real servers must never announce.
    announce: bool = False

    @model_validator(mode="after")
    def _prefix_fits(self) -> AddrArgs:
        if self.family == 4 and self.prefix > 32:
            raise ValueError(f"prefix /{self.prefix} is longer than an IPv4 address")
        return self

    @property
    def family(self) -> int:
        return family_of(self.address)


class AddrAbsentArgs(Args):
    key: str


def key_of(args: AddrArgs) -> str:
    return f"{args.address}/{args.prefix} dev {args.interface}"




def from_key(key: str) -> AddrArgs | None:
    """The address a ledger key names, or None if it is not a key this module writes."""
    m = _KEY_RE.fullmatch(key)
    if m is None:
        return None
    try:
        args = AddrArgs.model_validate(m.groupdict())
    except ValidationError:
        return None
    return args if key_of(args) == key else None


def _argv(verb: str, args: AddrArgs) -> tuple[str, ...]:
    argv = ("ip", "addr", verb, f"{args.address}/{args.prefix}", "dev", args.interface)
    return (*argv, "nodad") if args.family == 6 and verb != "del" else argv


def _announce_argv(args: AddrArgs) -> tuple[str, ...]:
    """One gratuitous ARP (IPv4, `arping -U`) or unsolicited neighbour advertisement (IPv6,
    states.nd_announce) for the address, best effort: clients otherwise keep the old MAC until
    their neighbour entry expires. The values reach the shell as positional parameters only."""
    if args.family == 6:
        return announce_argv(args.interface, args.address)
    script = (
        "command -v arping >/dev/null 2>&1 || exit 0; "
        'arping -U -c 1 -I "$1" "$2" >/dev/null || true'
    )
    return ("sh", "-c", script, "sh", args.interface, args.address)


def _state(low: LowState, ctx: PlanContext, args: AddrArgs) -> bool | None:
    """Whether the address is on the interface; None if the interface does not exist."""
    interfaces = known(host_facts(low, ctx).interfaces, "interfaces")
    for iface in interfaces:
        if iface.name == args.interface:
            return any(
                a.address == args.address and a.prefix == args.prefix for a in iface.addresses
            )
    return None


def present(low: LowState, args: AddrArgs, ctx: PlanContext) -> StateResult:
    try:
        state = _state(low, ctx, args)
    except FactUnknown as exc:
        return skip(low, f"cannot plan {key_of(args)}: {exc.reason}", unknown=exc.unread)
    if state is None:
        return skip(low, f"cannot plan {key_of(args)}: interface {args.interface} does not exist")
    if state:
        return StateResult()
    step = make_step(
        low,
        "add",
        "addr",
        f"add {args.address}/{args.prefix} to {args.interface}",
        before=None,
        after=key_of(args),
        commands=(_argv("add", args), _announce_argv(args))
        if args.announce
        else (_argv("add", args),),
        undo=(_argv("del", args),),
    )
    return StateResult(steps=(step,), claims=(Claim(FUNCTION, key_of(args)),))


def absent(low: LowState, absent_args: AddrAbsentArgs, ctx: PlanContext) -> StateResult:
    key = absent_args.key
    args = from_key(key)
    if args is None:
        return skip(low, f"not removing address {key!r}: not a key shoal writes")
    try:
        state = _state(low, ctx, args)
    except FactUnknown as exc:
        return skip(low, f"not removing {key_of(args)}: {exc.reason}", unknown=exc.unread)
    release = (Claim(FUNCTION, key_of(args)),)
    if not state:  # gone already, or its interface is
        return StateResult(releases=release)
    step = make_step(
        low,
        "delete",
        "addr",
        f"remove {args.address}/{args.prefix} from {args.interface}",
        before=key_of(args),
        after=None,
        commands=(_argv("del", args),),
        undo=(_argv("add", args),),
    )
    return StateResult(steps=(step,), releases=release)


def restore_line(args: AddrArgs) -> list[str]:
    """`replace`, not `add`: the address may be there already when the restore runs."""
    return [shlex.join(_argv("replace", args))]


PRESENT = StateKind(
    FUNCTION,
    AddrArgs,
    present,
    owns=Ownership(key_of, "addr.absent", 10),
    persist=Persistence(70, each(restore_line)),
)
ABSENT = StateKind("addr.absent", AddrAbsentArgs, absent, removes_only=True)
