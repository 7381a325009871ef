"""shoal-healthd in the plan: its files per director, and a held-down real server is not drift."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from reconciler.facts.hostfacts import Fact, FileInfo, HostFacts, IpvsTable
from reconciler.facts.parsers.nft_dsr import DsrService, DsrTable
from reconciler.plan import healthd_agent
from reconciler.plan.compile_health import STATE_PATH, health_notes, held_down
from reconciler.plan.compile_health import compile_health as compile_checker
from states import nft_dsr
from states.nft_dsr_model import DsrTableArgs, table_from_args, weighted_buckets
from states.nft_dsr_render import bucket_rule
from tests.unit.states.director_fixtures import MACS, commands, desired, dest, facts, plan, svc

KEY = "tcp 10.77.0.100:80 web1"


def _with_state(f: HostFacts, content: str | None, reason: str | None = None) -> HostFacts:
    info = FileInfo(path=STATE_PATH, exists=True, content=content,
                    content_unknown_reason=reason)  # fmt: skip
    return f.model_copy(update={"files": Fact.of({STATE_PATH: info})})


def _held(*keys: str) -> str:
    return json.dumps({"version": 1, "down": {k: "2026-12-04T22:00:00Z" for k in keys}})


def _all_facts(**extra: Any) -> dict[str, HostFacts]:
    return {h: facts(h, **extra) for h in MACS}


@pytest.mark.parametrize("backend", ["ipvsadm", "nftables"])
def test_every_director_gets_the_checker_and_its_config(backend: str) -> None:
    lows = [s for s in compile_checker(desired(backend), _all_facts()) if s.host == "lvs1"]
    assert [s.id for s in lows] == ["healthd-agent", "healthd-config", "healthd-unit",
                                    "healthd-enabled"]  # fmt: skip
    config = json.loads(lows[1].args["content"])
    (service,) = config["services"]
    assert service["backend"] == backend and service["key"] == "tcp 10.77.0.100:80"
    assert service["check"]["type"] == "http" and service["check"]["path"] == "/healthz"
    members = {m["host"]: m for m in service["members"]}
    assert members["web2"]["weight"] == 2 and members["web2"]["address"] == "10.77.0.22"
    assert ("mac" in members["web1"]) is (backend == "nftables")
    assert lows[0].args["content"] == Path(healthd_agent.__file__).read_text()
    assert "After=network.target shoal-restore.service" in lows[2].args["content"]


def test_no_checker_where_no_service_is_checked() -> None:
    d = desired("nftables", [{"name": "http", "vip": "10.77.0.100", "port": 80,
                              "check": {"type": "none"}, "real_server": [{"host": "web1"}]}])
    assert compile_checker(d, _all_facts()) == []
    assert compile_checker(desired("keepalived"), _all_facts()) == []


def test_the_checkers_bucket_rule_is_the_tables_own() -> None:
    """The agent renders the same buckets and rule text as shoal's renderer."""
    members = [(MACS["web1"], 2), (MACS["web2"], 0), (MACS["web3"], 4)]
    modulus, bmap = healthd_agent.buckets(members)
    want = weighted_buckets(members)
    model = DsrService("tcp", "10.77.0.100", 80, False, want)
    table = DsrTable("eth0", MACS["lvs1"], (model,))
    template = bucket_rule(table, model, healthd_agent.MODULUS, healthd_agent.BUCKETS)
    text = template.replace(healthd_agent.MODULUS, str(modulus)).replace(
        healthd_agent.BUCKETS, bmap)
    rendered = bucket_rule(table, model, str(model.modulus),
                           "{ " + ", ".join(f"{b.low}-{b.high} : {b.mac}" if b.low != b.high
                                            else f"{b.low} : {b.mac}" for b in want) + " }")
    assert text == rendered
    assert modulus == 3 and bmap == f"{{ 0 : {MACS['web1']}, 1-2 : {MACS['web3']} }}"


def test_an_ipvs_weight_the_checker_set_to_zero_is_not_drift() -> None:
    d = desired("ipvsadm")
    table = IpvsTable(available=True, services=(svc(),),
                      destinations=(dest("web1", 0), dest("web2", 2)))  # fmt: skip
    f = _all_facts(ipvs=table)
    _, steps, _ = plan(d, f)
    assert "ipvsadm -e -t 10.77.0.100:80 -r 10.77.0.21:80 -g -w 1" in commands(steps, "lvs1")
    f["lvs1"] = _with_state(f["lvs1"], _held(KEY))
    lows, steps, _ = plan(d, f)
    assert not any("10.77.0.21" in c for c in commands(steps, "lvs1")), commands(steps, "lvs1")
    rs = next(s for s in lows if s.host == "lvs1" and s.id == "ipvs-rs:web:http:web1")
    assert rs.args["held_down"] is True and rs.args["weight"] == 1
    # lvs2's checker holds nothing: there the weight is raised.
    assert "ipvsadm -e -t 10.77.0.100:80 -r 10.77.0.21:80 -g -w 1" in commands(steps, "lvs2")
    assert health_notes(d, f["lvs1"]) == (
        f"lvs1: {KEY} is held out by shoal-healthd (its check fails); not drift",
        "lvs1: systemd is not running (not in this test); shoal-healthd.service is installed "
        "and enabled, nothing starts it now",
    )


def test_a_held_down_nft_member_has_no_buckets_but_keeps_its_weight_at_boot() -> None:
    d = desired("nftables")
    f = _all_facts()
    f["lvs1"] = _with_state(f["lvs1"], _held(KEY))
    lows, _, _ = plan(d, f)
    low = next(s for s in lows if s.host == "lvs1" and s.function == nft_dsr.FUNCTION)
    args = DsrTableArgs.model_validate(low.args)
    macs = {b.mac for s in table_from_args(args).services for b in s.buckets}
    assert macs == {MACS["web2"]}
    boot = {b.mac for s in table_from_args(args, at_boot=True).services for b in s.buckets}
    assert boot == {MACS["web1"], MACS["web2"]}


@pytest.mark.parametrize("content,reason,why", [
    (None, "too large", f"{STATE_PATH}: too large"),
    ("{not json", None, f"{STATE_PATH} is not the checker's state"),
])  # fmt: skip
def test_an_unreadable_checker_state_plans_no_weight(
    content: str | None, reason: str | None, why: str
) -> None:
    for backend in ("ipvsadm", "nftables"):
        f = _all_facts()
        f["lvs1"] = _with_state(f["lvs1"], content, reason)
        assert held_down(f, "lvs1") == why
        lows, steps, _ = plan(desired(backend), f)
        skips = [s for s in lows if s.host == "lvs1" and s.function == "director.skipped"]
        assert skips and all(why in s.args["reason"] for s in skips), skips
        assert not [s for s in steps if s.host == "lvs1" and re.search(r"web\d", s.description)]
    unknown = _all_facts()["lvs1"].model_copy(update={"files": Fact.unknown("sh failed")})
    assert held_down({"lvs1": unknown}, "lvs1") == "files unknown (sh failed)"


def test_where_systemd_runs_the_checker_is_started_and_restarted_for_a_new_program() -> None:
    f = _all_facts()
    f["lvs1"] = f["lvs1"].model_copy(
        update={"services": Fact.of({"shoal-healthd.service": False})})
    lows = {s.id: s for s in compile_checker(desired("ipvsadm"), f) if s.host == "lvs1"}
    running = lows["healthd-running"]
    assert running.function == "service.running"
    assert running.args["name"] == "shoal-healthd.service"
    assert running.watch == ("healthd-agent",)  # the config is read again without a restart
    assert "healthd-running" not in {s.id for s in compile_checker(desired("ipvsadm"), f)
                                     if s.host == "lvs2"}  # fmt: skip
