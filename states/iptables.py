"""`iptables.rule_present` / `iptables.rule_absent`: one nat-table REDIRECT rule.

The redirect ARP method never puts the VIP on the real server: a `-t nat PREROUTING` REDIRECT
rule per VIP, port and protocol makes the director's packets local. The argv is written in the
form `iptables-save` prints back (`/32` added, `-m tcp` inserted; research notes 4.5), so the
canonical rule from the facts compares equal.

The destination's family picks the tool: an IPv6 VIP's rule is ip6tables' (`/128`, read back
from `ip6tables-save -t nat`, the `ip6tables_nat` fact). The ledger key shows the family in its
prefix length, so one function owns both and an IPv4 key reads exactly as before.
"""

from __future__ import annotations

import shlex
from typing import Any, Literal

from pydantic import ValidationError

from reconciler.desired.endpoint import endpoint
from reconciler.desired.models import IPAddress, Port, family_of
from reconciler.plan.steps import LowState
from states.appended_rule import AppendedRule, plan_absent, plan_present
from states.args import Args
from states.base import PlanContext, StateResult
from states.common import host_facts, known, skip, tool_missing
from states.kind import Ownership, Persistence, StateKind, each

FUNCTION = "iptables.rule_present"


class RedirectArgs(Args):
    table: Literal["nat"] = "nat"
    chain: Literal["PREROUTING"] = "PREROUTING"
    destination: IPAddress
    protocol: Literal["tcp", "udp"]
    dport: Port
    target: Literal["REDIRECT"] = "REDIRECT"
    to_ports: Port | None = None

    @property
    def family(self) -> int:
        return family_of(self.destination)

    @property
    def tool(self) -> str:
        return "ip6tables" if self.family == 6 else "iptables"

    @property
    def host_prefix(self) -> str:
        return "/128" if self.family == 6 else "/32"


class RedirectAbsentArgs(Args):
    key: str


def spec(args: RedirectArgs) -> tuple[str, ...]:
    """The canonical rule after `-A CHAIN`, as iptables-save prints it."""
    out = [
        "-d", f"{args.destination}{args.host_prefix}",
        "-p", args.protocol,
        "-m", args.protocol,
        "--dport", str(args.dport),
        "-j", args.target,
    ]  # fmt: skip
    if args.to_ports is not None:
        out += ["--to-ports", str(args.to_ports)]
    return tuple(out)


def key_of(args: RedirectArgs) -> str:
    return shlex.join((args.table, args.chain, *spec(args)))


_FLAGS = {"-d": "destination", "-p": "protocol", "--dport": "dport", "-j": "target",
          "--to-ports": "to_ports"}  # fmt: skip


def _from_key(key: str) -> RedirectArgs | None:
    """The rule a ledger key names, or None if it is not a key this module writes."""
    words = shlex.split(key)
    if len(words) < 2 or len(words) % 2:
        return None
    fields: dict[str, Any] = {"table": words[0], "chain": words[1]}
    for flag, value in zip(words[2::2], words[3::2], strict=True):
        if flag != "-m":  # implied by -p
            fields[_FLAGS.get(flag, flag)] = value
    if isinstance(fields.get("destination"), str):
        dest = fields["destination"]
        fields["destination"] = dest.removesuffix("/128" if ":" in dest else "/32")
    try:
        args = RedirectArgs.model_validate(fields)
    except ValidationError:
        return None
    # Deleting "almost this rule" is not ours to do: the key must be exactly what we write.
    return args if key_of(args) == key else None


def _count(low: LowState, ctx: PlanContext, args: RedirectArgs) -> int:
    facts = host_facts(low, ctx)
    nat = facts.ip6tables_nat if args.family == 6 else facts.iptables_nat
    # ip6tables comes in the iptables package: without iptables there is no ip6tables either.
    if not nat.known and tool_missing(facts, "iptables"):
        return 0
    rules = known(nat, f"{args.tool} nat rules").rules
    return sum(1 for r in rules if r.chain == args.chain and tuple(r.spec) == spec(args))


def _argv(verb: str, args: RedirectArgs) -> tuple[str, ...]:
    return (args.tool, "-t", args.table, verb, args.chain, *spec(args))


def _rule(args: RedirectArgs) -> AppendedRule:
    return AppendedRule(
        function=FUNCTION,
        tool=args.tool,
        subsystem="iptables",
        key=key_of(args),
        line=f"-t {args.table} -A {args.chain} {shlex.join(spec(args))}",
        add=_argv("-A", args),
        delete=_argv("-D", args),
    )


def present(low: LowState, args: RedirectArgs, ctx: PlanContext) -> StateResult:
    return plan_present(
        low,
        _rule(args),
        lambda: _count(low, ctx, args),
        f"redirect {args.protocol} {endpoint(args.destination, args.dport)} to the local host",
    )


def absent(low: LowState, absent_args: RedirectAbsentArgs, ctx: PlanContext) -> StateResult:
    key = absent_args.key
    args = _from_key(key)
    if args is None:
        return skip(low, f"not removing iptables rule {key!r}: not a key shoal writes")
    return plan_absent(
        low,
        _rule(args),
        lambda: _count(low, ctx, args),
        f"remove the redirect of {args.protocol} {endpoint(args.destination, args.dport)}",
    )


def restore_line(args: RedirectArgs) -> list[str]:
    """`nat_rule` (the restore script's prelude) adds the rule unless it is there; an IPv6
    rule spells the same check-then-append out with ip6tables (the prelude stays as it was)."""
    if args.family == 6:
        check = shlex.join(_argv("-C", args))
        return [f"{check} 2>/dev/null || {shlex.join(_argv('-A', args))}"]
    return [shlex.join(("nat_rule", args.chain, *spec(args)))]


PRESENT = StateKind(
    FUNCTION,
    RedirectArgs,
    present,
    owns=Ownership(key_of, "iptables.rule_absent", 20),
    persist=Persistence(50, each(restore_line)),
)
ABSENT = StateKind("iptables.rule_absent", RedirectAbsentArgs, absent, removes_only=True)
