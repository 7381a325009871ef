"""The bench's result table, ratios and target lines (pure; no timings measured here)."""

from __future__ import annotations

import pytest

from bench.report import (
    SUDO_NOTE,
    PlanScale,
    Results,
    evaluate_targets,
    render_markdown,
    render_table,
    render_text,
    sudo_notes,
    table_rows,
)
from bench.sshlog import PerHost
from bench.stats import Sample, Series, ratio


def _series(tool: str, action: str, walls: list[float], ssh: PerHost | None = None) -> Series:
    s = Series(tool, action, 50)
    s.samples = [Sample(wall=w, cpu=w / 2, ok=True, ssh=ssh) for w in walls]
    return s


def _results() -> Results:
    one = PerHost(1, 1, 1, 1, 50)
    r = Results(machine={"cores": "2"}, versions={"shoal": "0.1.0"}, repetitions=3)
    r.series = [
        _series("shoal", "noop", [1.0, 1.2, 1.1], one),
        _series("floor", "noop", [0.9, 1.0, 1.0], one),
        _series("ansible", "noop", [9.0, 10.0, 11.0]),
        _series("pyinfra", "noop", [4.0, 4.4, 5.0]),
        _series("shoal", "converge", [2.0, 2.0, 2.0], PerHost(1, 1, 2, 2, 50)),
        _series("ansible", "converge", [13.0, 12.0, 14.0]),
        _series("pyinfra", "converge", [11.0, 11.0, 11.0]),
    ]
    r.plan_scale = [
        PlanScale(1000, 200, 0.05, 0.05, 10.0, 7000),
        PlanScale(10000, 200, 0.5, 0.9, 100.0, 70000),
    ]
    return r


def test_series_min_median_and_failed_samples() -> None:
    s = _series("shoal", "noop", [3.0, 1.0, 2.0])
    s.samples.append(Sample(wall=0.1, cpu=0.1, ok=False, note="did not converge"))
    assert s.wall("min") == 1.0
    assert s.wall() == 2.0  # failed samples do not count
    assert not s.verified
    assert Series("x", "noop", 1).wall() is None
    assert ratio(2.0, 0.0) is None and ratio(None, 1.0) is None and ratio(3.0, 2.0) == 1.5


def test_table_rows_give_ratios_against_shoal() -> None:
    rows = {(r[1], r[2]): r for r in table_rows(_results())}
    assert rows[("noop", "ansible")][-1] == "9.09x"  # 10.0 / 1.1
    assert rows[("noop", "floor")][-1] == "1.10x"  # shoal / floor: 1.1 / 1.0
    assert rows[("converge", "pyinfra")][-1] == "5.50x"
    assert rows[("noop", "shoal")][6] == "1 conn, 1 ch"
    assert rows[("noop", "shoal")][7] == "yes"


def test_render_table_aligns_columns() -> None:
    text = render_table([["1", "long value"], ["22", "x"]], ["a", "b"])
    lines = text.splitlines()
    assert lines[0].startswith("a   b")
    assert lines[1] == "--  ----------"
    assert lines[3].startswith("22  x")


def test_targets_met_and_not_met() -> None:
    targets = {t.name: t for t in evaluate_targets(_results(), 50)}
    assert targets["no-op check 50 hosts, shoal / floor"].met is True  # 1.1 <= 1.3
    assert targets["no-op check 50 hosts, Ansible / shoal"].met is True  # 9.09 >= 8
    assert targets["no-op check 50 hosts, pyinfra / shoal"].met is False  # 4.0 < 5
    assert targets["converge 50 hosts, Ansible / shoal"].met is True  # 6.5
    assert targets["converge 50 hosts, pyinfra / shoal"].met is False  # 5.5
    assert targets["facts: SSH round trips per host (shoal plan)"].met is True
    apply = "apply: SSH channels per real server (facts + 1 phase + lock-out confirmation)"
    assert targets[apply].met is False  # 1 conn, 2 ch: no confirmation connection
    r = _results()
    r.series[4] = _series("shoal", "converge", [2.0], PerHost(2, 2, 3, 3, 50))
    assert {t.name: t for t in evaluate_targets(r, 50)}[apply].met is True
    assert targets["plan of 10,000 real servers (load + plan), seconds"].met is False  # 1.4
    growth = targets["growth 1,000 -> 10,000 real servers (load + plan)"]
    assert growth.value == pytest.approx(14.0) and growth.met is False
    assert "NOT met" in growth.line() and "(target <= 12)" in growth.line()


def test_targets_not_measured_when_a_tool_is_missing() -> None:
    r = _results()
    r.series = [s for s in r.series if s.tool != "floor"]
    t = {t.name: t for t in evaluate_targets(r, 50)}["no-op check 50 hosts, shoal / floor"]
    assert t.met is None and t.line().startswith("not measured")


def test_render_text_and_markdown_hold_table_targets_and_versions() -> None:
    r = _results()
    r.targets = evaluate_targets(r, 50)
    r.profiles = [
        "100 samples; by total time (own code):\n  50.0%  reconciler/plan/planner.py:plan_host"
    ]
    text = render_text(r)
    assert "Targets:" in text and "ansible" in text and "10000" in text
    md = render_markdown(r, "shoal benchmark")
    assert md.startswith("# shoal benchmark")
    assert "| hosts | action | tool |" in md
    assert "- cores: 2" in md and "- shoal: 0.1.0" in md
    assert "reconciler/plan/planner.py:plan_host" in md


def _with_sudo(noop: PerHost, converge: PerHost) -> Results:
    r = _results()
    r.series += [
        _series("shoal-sudo", "noop", [1.3, 1.4, 1.5], noop),
        _series("shoal-sudo", "converge", [2.2, 2.4, 2.2], converge),
    ]
    return r


def test_shoal_sudo_sits_beside_shoal_with_its_ratio_to_shoal() -> None:
    r = _with_sudo(PerHost(1, 1, 1, 1, 50), PerHost(1, 1, 2, 2, 50))
    rows = table_rows(r)
    noop_tools = [row[2] for row in rows if row[1] == "noop"]
    assert noop_tools[:2] == ["shoal", "shoal-sudo"]
    by = {(row[1], row[2]): row for row in rows}
    assert by[("noop", "shoal-sudo")][6] == by[("noop", "shoal")][6] == "1 conn, 1 ch"
    assert by[("converge", "shoal-sudo")][-1] == "1.10x"  # 2.2 / 2.0


def test_equal_round_trips_are_noted_and_met() -> None:
    r = _with_sudo(PerHost(1, 1, 1, 1, 50), PerHost(1, 1, 2, 2, 50))
    assert sudo_notes(r) == [
        "50 hosts, converge: ssh/host shoal 1 conn, 2 ch, shoal-sudo 1 conn, 2 ch: "
        "equal, as they must be",
        "50 hosts, noop: ssh/host shoal 1 conn, 1 ch, shoal-sudo 1 conn, 1 ch: "
        "equal, as they must be",
    ]
    targets = {t.name: t for t in evaluate_targets(r, 50)}
    assert targets["noop: SSH round trips per real server, shoal-sudo == shoal"].met is True
    assert targets["converge: SSH round trips per real server, shoal-sudo == shoal"].met is True
    r.notes = sudo_notes(r)
    md = render_markdown(r, "shoal benchmark")
    assert SUDO_NOTE in md and "equal, as they must be" in md


def test_a_round_trip_more_through_sudo_is_flagged() -> None:
    r = _with_sudo(PerHost(1, 1, 1, 1, 50), PerHost(1, 2, 2, 3, 50))
    (converge,) = [n for n in sudo_notes(r) if "converge" in n]
    assert converge.endswith("NOT EQUAL: become costs round trips")
    assert "shoal-sudo 1-2 conn, 2-3 ch" in converge
    target = {t.name: t for t in evaluate_targets(r, 50)}[
        "converge: SSH round trips per real server, shoal-sudo == shoal"
    ]
    assert target.met is False and target.line().startswith("NOT met")


def test_without_shoal_sudo_there_is_no_note_and_no_target() -> None:
    r = _results()
    assert sudo_notes(r) == []
    assert not [t for t in evaluate_targets(r, 50) if "shoal-sudo" in t.name]
    assert SUDO_NOTE not in render_markdown(r, "shoal benchmark")


def test_fixed_cost_and_plan_memory_targets() -> None:
    r = _results()
    fixed = Series("shoal", "fixed", 1)
    fixed.samples = [Sample(wall=w, cpu=w, ok=True) for w in (0.5, 0.3, 0.35)]
    r.series.append(fixed)
    targets = {t.name.split(":")[0]: t for t in evaluate_targets(r, 50)}
    assert targets["fixed cost"].value == 0.35 and targets["fixed cost"].met is True
    assert "1 real server(s)" in targets["fixed cost"].name
    assert targets["peak memory of that load + plan, MiB"].met is True  # 100 <= 200
    assert "fixed: `shoal plan`" in render_markdown(r, "t")
    rows = {(row[1], row[2]) for row in table_rows(r)}
    assert ("fixed", "shoal") in rows
