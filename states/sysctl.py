"""`sysctl.present` / `sysctl.absent`: runtime kernel parameters (`sysctl -w`).

Persistence (/etc/sysctl.d) is a separate file.managed state. The present form records the
value it replaces, so the absent form can give the host its own value back; the absent form
acts only on keys the ledger lists, restoring the recorded original.

A key of a kernel module (`module = "ip_vs"`: the net.ipv4.vs.* keys) exists only once the
module is loaded, and on a fresh director it is not yet (ipvsadm or keepalived load it on first
use). Such a key is planned from the module's own default (`module_default`, what the key reads
right after the module loads); the state requires a `kmod.present` that loads the module in the
packages phase, before this step's phase takes its snapshot. On a kernel without the module the
key is skipped, saying so.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator

from reconciler.plan.steps import LowState
from states.args import Args
from states.base import Claim, PlanContext, StateResult
from states.common import FactUnknown, host_facts, known, make_step, skip
from states.kind import BootFile, Ownership, Persistence, StateKind, each

FUNCTION = "sysctl.present"
SYSCTL_CONF = "/etc/sysctl.d/90-shoal-lvs-dr.conf"

# procps form: dots separate levels, a dot inside an interface name is written as '/'.
_KEY_RE = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_/-]+){1,7}$")
_VALUE_RE = re.compile(r"^-?[0-9]+([ \t]+-?[0-9]+)*$")


def _check_key(value: str) -> str:
    if not _KEY_RE.fullmatch(value) or len(value) > 200:
        raise ValueError(f"{value!r} is not a sysctl key (e.g. net.ipv4.conf.all.arp_ignore)")
    return value


def _check_value(value: Any) -> str:
    text = str(value).strip()
    if not _VALUE_RE.fullmatch(text):
        raise ValueError(f"{value!r} is not a numeric sysctl value")
    return normalize(text)


SysctlKey = Annotated[str, AfterValidator(_check_key)]


SysctlValue = Annotated[str, BeforeValidator(_check_value)]


class SysctlArgs(Args):
    key: SysctlKey
    value: SysctlValue
    # The kernel module whose key this is, and the key's value right after the module loads.
    module: Literal["ip_vs"] | None = None
    module_default: SysctlValue | None = None


class SysctlAbsentArgs(Args):
    key: SysctlKey


def normalize(value: str) -> str:
    """`sysctl -n` separates multiple values with tabs; compare them whitespace-insensitively."""
    return " ".join(value.split())


def interface_key(interface: str, name: str) -> str:
    """The sysctl key of `net.ipv4.conf.<interface>.<name>` ('.' in a VLAN name becomes '/')."""
    return f"net.ipv4.conf.{interface.replace('.', '/')}.{name}"


def lookup(sysctls: dict[str, str], key: str) -> str | None:
    """A key's value; facts may spell a VLAN interface's key with its dot (`eth0.100`)."""
    value = sysctls.get(key)
    return sysctls.get(key.replace("/", ".")) if value is None else value


def ledger_key(args: SysctlArgs) -> str:
    return args.key


def _assign(key: str, value: str) -> tuple[str, ...]:
    return ("sysctl", "-w", f"{key}={value}")


def present(low: LowState, args: SysctlArgs, ctx: PlanContext) -> StateResult:
    try:
        sysctls = known(host_facts(low, ctx).sysctls, "sysctls")
    except FactUnknown as exc:
        return skip(low, f"cannot plan {args.key}: {exc.reason}", unknown=exc.unread)
    current = lookup(sysctls, args.key)
    note = ""
    if current is None and args.module is not None:
        found = _module_default(low, ctx, args)
        if isinstance(found, StateResult):
            return found
        current, note = found, f" ({args.module} not loaded yet: its default)"
    if current is None:
        return skip(low, f"cannot plan {args.key}: it was not gathered (no such key?)")
    if normalize(current) == args.value:
        return StateResult()
    step = make_step(
        low,
        "set",
        "sysctl",
        f"set {args.key} = {args.value}",
        before=f"{args.key} = {normalize(current)}{note}",
        after=f"{args.key} = {args.value}",
        commands=(_assign(args.key, args.value),),
        undo=(_assign(args.key, normalize(current)),),
    )
    return StateResult(steps=(step,), claims=(Claim(FUNCTION, args.key, normalize(current)),))


def _module_default(low: LowState, ctx: PlanContext, args: SysctlArgs) -> str | StateResult:
    """A module key that was not gathered: the value it will read once the packages phase has
    loaded the module (see the module docstring), or the skip that says why it cannot be set."""
    assert args.module is not None
    try:
        table = known(host_facts(low, ctx).ipvs, "IPVS")
    except FactUnknown as exc:
        return skip(low, f"cannot plan {args.key}: {exc.reason}", unknown=exc.unread)
    if not table.available:
        why = table.detail or f"this kernel has no {args.module}"
        return skip(low, f"cannot plan {args.key}: {why}")
    if table.loaded or args.module_default is None:
        # Loaded, yet the key is missing: an older kernel without it. Nothing to write.
        return skip(low, f"cannot plan {args.key}: this kernel's {args.module} has no such key")
    return args.module_default


def absent(low: LowState, args: SysctlAbsentArgs, ctx: PlanContext) -> StateResult:
    try:
        facts = host_facts(low, ctx)
        ledger = known(facts.ledger, "ledger")
        sysctls = known(facts.sysctls, "sysctls")
    except FactUnknown as exc:
        return skip(low, f"not restoring {args.key}: {exc.reason}", unknown=exc.unread)
    original = ledger.sysctl_originals.get(args.key)
    if original is None:
        return skip(low, f"not restoring {args.key}: the ledger has no original value for it")
    current = lookup(sysctls, args.key)
    if current is None:
        return skip(low, f"not restoring {args.key}: it was not gathered")
    release = (Claim(FUNCTION, args.key, original),)
    if normalize(current) == normalize(original):
        return StateResult(releases=release)
    step = make_step(
        low,
        "restore",
        "sysctl",
        f"restore {args.key} to its original {normalize(original)}",
        before=f"{args.key} = {normalize(current)}",
        after=f"{args.key} = {normalize(original)}",
        commands=(_assign(args.key, normalize(original)),),
        undo=(_assign(args.key, normalize(current)),),
    )
    return StateResult(steps=(step,), releases=release)


# --- boot form ------------------------------------------------------------------------------------


def restore_line(args: SysctlArgs) -> list[str]:
    """Set the key at boot; a module's key after loading the module (it does not exist before)."""
    assign = shlex.join(("sysctl", "-q", "-w", f"{args.key}={args.value}"))
    return [f"{shlex.join(('modprobe', args.module))} && {assign}" if args.module else assign]


def sysctl_conf(states: Sequence[SysctlArgs]) -> BootFile | None:
    """The sysctl.d file for the host's sysctl.present states, or None if it has none."""
    lines = []
    for args in states:
        # A module's key does not exist before the module loads, which may be after
        # systemd-sysctl: "-" lets that pass quietly (shoal-restore sets it after loading).
        dash = "-" if args.module else ""
        lines.append(f"{dash}{args.key} = {args.value}")
    if not lines:
        return None
    what = (
        "kernel settings (ARP, IPVS)"
        if any(ln.startswith("-") for ln in lines)
        else "ARP suppression"
    )
    head = f"# Managed by shoal: {what} for LVS Direct Routing.\n"
    content = head + "\n".join(sorted(set(lines))) + "\n"
    return BootFile(state_id="persist-sysctl-conf", path=SYSCTL_CONF, content=content)


PRESENT = StateKind(
    FUNCTION,
    SysctlArgs,
    present,
    owns=Ownership(ledger_key, "sysctl.absent", 40),
    persist=Persistence(10, each(restore_line), boot_file=sysctl_conf),
)
ABSENT = StateKind("sysctl.absent", SysctlAbsentArgs, absent, removes_only=True)
