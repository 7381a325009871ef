"""The nftables tables the xtables-nft tools make for shoal's rules, and their removal.

`arptables-nft -A` creates `table arp filter`, `iptables-nft -t nat -A` creates `table ip nat`
and `ip6tables-nft -t nat -A` creates `table ip6 nat` when they are missing; deleting the last
rule leaves the table (and its base chains) behind. shoal records a table in its ledger
(function `xtables.table`, key "family name") when the plan appends the first rule into a table
the facts do not show, and deletes it when that table is left with no rule after the plan. A
table that was there before shoal's first rule, or that still holds any rule, is someone else's
or still used: it stays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from reconciler.facts.hostfacts import ArptablesRules, Fact, HostFacts, IptablesNat, Ledger
from reconciler.plan.steps import LowState, Step, Subsystem
from states.base import Claim
from states.common import make_step

FUNCTION = "xtables.table"
STATE_ID_PREFIX = "shoal-xtables-"
# rule function -> the table its nft backend puts the rule in, and the plan's subsystem for it
TABLES = {"arptables.rule_present": ("arp filter", "arp"),
          "iptables.rule_present": ("ip nat", "iptables")}  # fmt: skip
_REMOVERS = {"arptables.rule_absent": "arp filter", "iptables.rule_absent": "ip nat"}
# An iptables state's rule goes to ip6tables (and its nft table) when its VIP is IPv6.
_IP6 = ("ip nat", "ip6 nat")


def _fact(hf: HostFacts, key: str) -> Fact[ArptablesRules] | Fact[IptablesNat]:
    if key == "arp filter":
        return hf.arptables
    return hf.ip6tables_nat if key == "ip6 nat" else hf.iptables_nat


def _table_of(step: Step, tables: dict[str, str]) -> str | None:
    """The table `step` (of a function in `tables`) adds to or deletes from."""
    table = tables.get(step.function)
    if table == _IP6[0] and any(argv[:1] == ("ip6tables",) for argv in step.commands):
        return _IP6[1]
    return table


def _v6_key(key: str) -> bool:
    return "/128" in key  # an IPv6 rule's destination (states.iptables.key_of)


def _nft_backend(hf: HostFacts, key: str) -> bool:
    fact = _fact(hf, key)
    return fact.known and fact.value is not None and fact.value.backend == "nft"


def _table_exists(hf: HostFacts, key: str) -> bool | None:
    if not hf.nft.known or hf.nft.value is None:
        return None
    family, name = key.split(" ", 1)
    return hf.nft.value.table(family, name) is not None


def _rule_count(hf: HostFacts, key: str) -> int | None:
    fact = _fact(hf, key)
    if not fact.known or fact.value is None:
        return None
    return len(fact.value.rules)


def created_tables(hf: HostFacts, steps: Iterable[Step]) -> list[Claim]:
    """Claims for the tables this plan's first rule will make (nft backend, table missing)."""
    out: list[Claim] = []
    adding = {f: t for f, (t, _) in TABLES.items()}
    for key in dict.fromkeys(t for s in steps if (t := _table_of(s, adding)) is not None):
        if _nft_backend(hf, key) and _table_exists(hf, key) is False:
            out.append(Claim(FUNCTION, key))
    return out


def removal_steps(host: str, hf: HostFacts, ledger: Ledger,
                  steps: Sequence[Step]) -> tuple[list[Step], list[Claim]]:  # fmt: skip
    """Steps deleting shoal's tables left empty by `steps`, and the ledger entries they drop.

    `ledger` is the host's ledger after this plan's other changes. A table still holding
    someone else's rules once shoal has none left in it is theirs now: only its entry goes.
    """
    out: list[Step] = []
    released: list[Claim] = []
    owners = {table: function for function, (table, _) in TABLES.items()}
    owners[_IP6[1]] = owners[_IP6[0]]
    adding = {f: t for f, (t, _) in TABLES.items()}
    for key in ledger.entries.get(FUNCTION, ()):
        exists = _table_exists(hf, key)
        count = _rule_count(hf, key)
        if exists is None or count is None:
            continue  # unknown: nothing is removed
        added = sum(len(s.commands) for s in steps if _table_of(s, adding) == key)
        if not exists:
            if not added:  # gone, and this plan does not make it again
                released.append(Claim(FUNCTION, key))
            continue
        deleted = [s for s in steps if _table_of(s, _REMOVERS) == key]
        # Only shoal's rules of this table's family keep it shoal's.
        shoal_left = any(
            _v6_key(k) == (key == _IP6[1]) or owners[key] != owners[_IP6[0]]
            for k in ledger.entries.get(owners[key], ())
        )
        if count + added - sum(len(s.commands) for s in deleted) > 0 or not deleted:
            if not shoal_left:
                released.append(Claim(FUNCTION, key))
            continue  # still holds rules (or nothing of shoal's went): it stays
        family, name = key.split(" ", 1)
        subsystem: Subsystem = "arp" if family == "arp" else "iptables"
        low = LowState(id=STATE_ID_PREFIX + key.replace(" ", "-"), function=f"{FUNCTION}_absent",
                       host=host, phase=max(s.phase for s in deleted),
                       origin="ledger")  # fmt: skip
        step = make_step(
            low, "delete", subsystem,
            f"delete the empty nft table {key} that shoal's rules made",
            before=f"table {key}",
            # Appending a rule again (the undo of the deletions) makes the table again.
            commands=(("nft", "delete", "table", family, name),),
        )  # fmt: skip
        out.append(step.model_copy(update={"require": tuple(s.id for s in deleted)}))
        released.append(Claim(FUNCTION, key))
    return out, released
