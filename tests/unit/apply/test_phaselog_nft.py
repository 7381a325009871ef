"""The rollback proof on `nft -s list table` snapshots taken while traffic flows.

fixtures/snapshots/nft-ours-*.txt are real `nft_ours` outputs (every shoal_* table, `nft -s list
table`), captured in throwaway network namespaces built like tests/lab/test_director_dsr_netns.py:
shoal's rendered `netdev shoal_dsr` table on a director, plus a `netdev shoal_static` table with a
plain set and map.

- empty: the DSR table before any traffic (its flow map and closing set hold nothing);
- flows-a: after a few connections (three still open), the flow map and closing set filled;
- flows-b: the same tables a moment later, after more connections: other elements;
- static-changed: flows-b with one more element in the static set `allowed`;
- weights-changed: after shoal's update transaction changed the weights 1:1 -> 1:2.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.apply.phaselog import Section, compare_sections, normalise

FIX = Path(__file__).resolve().parents[3] / "fixtures" / "snapshots"


def _nft(name: str) -> dict[str, Section]:
    text = (FIX / f"nft-ours-{name}.txt").read_text(encoding="utf-8")
    return {"nft": Section("nft", 0, text)}


def test_the_captures_really_differ_in_their_flow_elements() -> None:
    a, b = _nft("flows-a")["nft"].content, _nft("flows-b")["nft"].content
    assert "elements = {" in a and a != b
    assert "elements = {" not in _nft("empty")["nft"].content.split("shoal_static")[0]


@pytest.mark.parametrize(("before", "after"), [("flows-a", "flows-b"), ("empty", "flows-b")])
def test_flow_map_and_closing_set_elements_are_not_compared(before: str, after: str) -> None:
    assert compare_sections(_nft(before), _nft(after)) == []


def test_dynamic_declarations_rules_and_static_elements_stay_byte_exact() -> None:
    text = _nft("flows-a")["nft"].content
    kept = normalise("nft", text)
    # Only lines of the two dynamic elements clauses went; every other line is untouched.
    assert [ln for ln in text.split("\n") if ln in kept.split("\n")] == kept.split("\n")
    assert "10.97.0.31 . 60484" not in kept
    for line in ("\t\ttimeout 5m", "\t\tflags dynamic,timeout", "\t\ttimeout 5s",
                 "\t\telements = { 10.97.0.31 . 80 }"):  # fmt: skip
        assert line in kept.split("\n"), line
    assert "elements = { 10.97.0.31 : " in kept  # the static map's element
    # Another section with the same text is compared raw.
    assert normalise("nft_tables", text) == text


def test_a_static_set_element_is_still_a_difference() -> None:
    (diff,) = compare_sections(_nft("flows-b"), _nft("static-changed"))
    assert diff.startswith("nft differs") and "10.97.0.32 . 80" in diff


def test_a_changed_dsr_table_is_still_a_difference() -> None:
    (diff,) = compare_sections(_nft("flows-a"), _nft("weights-changed"))
    assert "mod 3 map" in diff and "mod 2 map" in diff and "shoal-dsr" in diff
