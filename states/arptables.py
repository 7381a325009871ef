"""`arptables.rule_present` / `arptables.rule_absent`: one arptables rule, modern chain names.

Real servers using the arptables ARP method get two rules per VIP (research notes, 4.4):
`-A INPUT -d VIP -j DROP` and `-A OUTPUT -s VIP -j mangle --mangle-ip-s RIP`. The 2005
HOWTO's `IN`/`OUT` chains fail on arptables 0.0.5 and arptables-nft, and its `-d` form of the
OUTPUT rule leaks the VIP as ARP sender. `-A` appends duplicates and legacy arptables has no
`-C`, so the comparison is against the parsed canonical rules from the facts.
"""

from __future__ import annotations

import shlex
from typing import Any, Literal

from pydantic import ValidationError, model_validator

from reconciler.desired.models import IPv4
from reconciler.facts.hostfacts import ArpRule
from reconciler.plan.steps import LowState
from states.appended_rule import AppendedRule, plan_absent, plan_present
from states.args import Args
from states.base import PlanContext, StateResult
from states.common import host_facts, known, skip, strip_host_prefix, tool_missing
from states.kind import Ownership, Persistence, StateKind, each

FUNCTION = "arptables.rule_present"


class ArpRuleArgs(Args):
    chain: Literal["INPUT", "OUTPUT"]
    target: Literal["DROP", "mangle"]
    source: IPv4 | None = None
    destination: IPv4 | None = None
    mangle_ip_s: IPv4 | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ArpRuleArgs:
        if self.source is None and self.destination is None:
            raise ValueError("an ARP rule must match a source or a destination address")
        if (self.target == "mangle") != (self.mangle_ip_s is not None):
            raise ValueError("mangle_ip_s goes with target mangle, and only with it")
        if self.target == "mangle" and self.chain != "OUTPUT":
            raise ValueError("the mangle target belongs in the OUTPUT chain")
        return self


class ArpRuleAbsentArgs(Args):
    key: str


def spec(args: ArpRuleArgs) -> tuple[str, ...]:
    """The rule after `-A`/`-D`: chain, matches, target, target options."""
    out: list[str] = [args.chain]
    if args.source:
        out += ["-s", args.source]
    if args.destination:
        out += ["-d", args.destination]
    out += ["-j", args.target]
    if args.mangle_ip_s:
        out += ["--mangle-ip-s", args.mangle_ip_s]
    return tuple(out)


def key_of(args: ArpRuleArgs) -> str:
    return shlex.join(spec(args))


_FLAGS = {"-s": "source", "-d": "destination", "-j": "target", "--mangle-ip-s": "mangle_ip_s"}


def from_key(key: str) -> ArpRuleArgs | None:
    """The rule a ledger key names, or None if it is not a key this module writes."""
    words = shlex.split(key)
    if len(words) % 2 != 1:
        return None
    fields: dict[str, Any] = {"chain": words[0]}
    for flag, value in zip(words[1::2], words[2::2], strict=True):
        fields[_FLAGS.get(flag, flag)] = value
    try:
        args = ArpRuleArgs.model_validate(fields)
    except ValidationError:
        return None
    return args if key_of(args) == key else None


def matches(rule: ArpRule, args: ArpRuleArgs) -> bool:
    """Whether a parsed rule is exactly this rule (no extra interface, opcode or MAC match)."""
    return (
        rule.chain == args.chain
        and rule.target.lower() == args.target.lower()
        and strip_host_prefix(rule.source_ip) == args.source
        and strip_host_prefix(rule.destination_ip) == args.destination
        and strip_host_prefix(rule.mangle_ip_s) == args.mangle_ip_s
        and rule.interface_in is None
        and rule.interface_out is None
        and rule.opcode is None
        and rule.source_mac is None
        and rule.destination_mac is None
        and rule.mangle_ip_d is None
        and rule.mangle_mac_s is None
        and rule.mangle_mac_d is None
        and not rule.extra
    )


def _count(low: LowState, ctx: PlanContext, args: ArpRuleArgs) -> int:
    facts = host_facts(low, ctx)
    if not facts.arptables.known and tool_missing(facts, "arptables"):
        return 0  # no arptables, so no rule: installing it comes first (pkg.installed)
    rules = known(facts.arptables, "arptables rules").rules
    return sum(1 for r in rules if matches(r, args))


def _rule(args: ArpRuleArgs) -> AppendedRule:
    return AppendedRule(
        function=FUNCTION,
        tool="arptables",
        subsystem="arp",
        key=key_of(args),
        line=f"-A {key_of(args)}",
        add=("arptables", "-A", *spec(args)),
        delete=("arptables", "-D", *spec(args)),
    )


def present(low: LowState, args: ArpRuleArgs, ctx: PlanContext) -> StateResult:
    return plan_present(
        low, _rule(args), lambda: _count(low, ctx, args), f"add arptables rule {key_of(args)}"
    )


def absent(low: LowState, absent_args: ArpRuleAbsentArgs, ctx: PlanContext) -> StateResult:
    key = absent_args.key
    args = from_key(key)
    if args is None:
        return skip(low, f"not removing arptables rule {key!r}: not a key shoal writes")
    return plan_absent(
        low, _rule(args), lambda: _count(low, ctx, args), f"remove arptables rule {key_of(args)}"
    )


def restore_line(args: ArpRuleArgs) -> list[str]:
    """`arp_rule` (the restore script's prelude) adds the rule unless it is there."""
    return [shlex.join(("arp_rule", *spec(args)))]


PRESENT = StateKind(
    FUNCTION,
    ArpRuleArgs,
    present,
    owns=Ownership(key_of, "arptables.rule_absent", 30),
    persist=Persistence(20, each(restore_line)),
)
ABSENT = StateKind("arptables.rule_absent", ArpRuleAbsentArgs, absent, removes_only=True)
