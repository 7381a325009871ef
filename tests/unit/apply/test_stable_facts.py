"""The facts half of the rollback proof: what it ignores and what it still sees.

A rollback that recreates tables a phase deleted (the empty `ip nat` / `ip6 nat` of
iptables-nft, dropped when the REDIRECT method goes) brings them back in another listing order;
the proof must hold for that, and must still fail for any change inside a table or a table more
or less.
"""

from __future__ import annotations

from reconciler.apply.stable_facts import facts_differences, stable_digest
from reconciler.facts.hostfacts import Fact, HostFacts, NftRuleset, NftTable
from tests.statecases import fresh_facts

NAT = NftTable(family="ip", name="nat", canonical_json='{"chains": ["PREROUTING"]}')
NAT6 = NftTable(family="ip6", name="nat", canonical_json='{"chains": ["PREROUTING"]}')
ARP = NftTable(family="arp", name="filter", canonical_json='{"chains": ["INPUT"]}')


def _with(*tables: NftTable) -> HostFacts:
    return fresh_facts("web1").model_copy(update={"nft": Fact.of(NftRuleset(tables=tables))})


def test_recreated_tables_in_another_order_prove_the_same() -> None:
    before, after = _with(NAT, NAT6, ARP), _with(ARP, NAT6, NAT)
    assert stable_digest(before) == stable_digest(after)
    assert facts_differences(before, after) == []


def test_a_changed_or_missing_table_is_still_a_difference() -> None:
    before = _with(NAT, NAT6)
    changed = _with(NAT6, NAT.model_copy(update={"canonical_json": '{"chains": []}'}))
    assert stable_digest(changed) != stable_digest(before)
    assert [d.splitlines()[0] for d in facts_differences(before, changed)] == ["fact nft differs:"]
    assert stable_digest(_with(NAT)) != stable_digest(before)


def test_an_unknown_nft_fact_is_left_as_it_is() -> None:
    unknown = fresh_facts("web1").model_copy(update={"nft": Fact[NftRuleset](unknown_reason="x")})
    assert stable_digest(unknown) != stable_digest(_with())
