"""The nftables DSR director backend: golden table, `nft -c`, read-back and update planning."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reconciler.facts.hostfacts import NftRuleset, NftTable
from reconciler.facts.parsers.nft_dsr import decode_table
from reconciler.plan.steps import LowState, Phase
from states import nft_dsr
from states.base import PlanContext
from states.nft_dsr_model import DsrTableArgs, table_from_args, weighted_buckets
from states.nft_dsr_render import render_replace
from tests.unit.states.director_fixtures import MACS, commands, desired, facts, plan

DATA = Path(__file__).parent / "director_data"
CAPTURED = (DATA / "nft-dsr-list.json").read_text()  # `nft -j list table`, nft 1.0.6, no handles


def _args(w1: int = 1, w2: int = 2, w3: int = 0) -> dict[str, Any]:
    return {
        "interface": "eth0", "director_mac": MACS["lvs1"], "drain_timeout": 30,
        "services": [
            {"protocol": "tcp", "vip": "10.77.0.100", "port": 80, "persistence": 0,
             "members": [{"host": "web1", "mac": MACS["web1"], "weight": w1},
                         {"host": "web2", "mac": MACS["web2"], "weight": w2}]},
            {"protocol": "udp", "vip": "10.77.0.101", "port": 53, "persistence": 600,
             "members": [{"host": "web3", "mac": MACS["web3"], "weight": w3}]},
        ],
    }  # fmt: skip


def _plan_table(args: dict[str, Any], table_json: str | None) -> Any:
    tables = () if table_json is None else (
        NftTable(family="netdev", name="shoal_dsr", canonical_json=table_json),)  # fmt: skip
    f = facts("lvs1", nft=NftRuleset(tables=tables))
    low = LowState(id="nft-dsr", function=nft_dsr.FUNCTION, host="lvs1", args=args,
                   phase=Phase.DIRECTOR_PRIMARY)  # fmt: skip
    ctx = PlanContext(desired=desired("nftables"), facts={"lvs1": f})
    return nft_dsr.TABLE_PRESENT.run(low, ctx)


def test_golden_table() -> None:
    text = render_replace(table_from_args(DsrTableArgs.model_validate(_args())))
    assert text == (DATA / "nft-dsr-replace.nft").read_text()


def test_buckets_follow_weights() -> None:
    b = weighted_buckets([("aa", 2), ("bb", 4), ("cc", 0), ("dd", 6)])
    assert [(x.low, x.high, x.mac) for x in b] == [(0, 0, "aa"), (1, 2, "bb"), (3, 5, "dd")]
    assert weighted_buckets([("aa", 0)]) == ()


def test_nft_accepts_rendered_table() -> None:
    """`nft -c -f` on the golden table, in a throwaway namespace that has an eth0."""
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
        if os.environ.get("CI") == "true":
            pytest.fail("needs root, ip and nft")
        pytest.skip("needs root, ip and nft")
    ns = f"sdsrchk{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name",
                        "eth1"], check=True)  # fmt: skip
        res = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-c", "-f", str(DATA / "nft-dsr-replace.nft")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_fresh_table_is_one_atomic_replace() -> None:
    r = _plan_table(_args(), None)
    assert r.skipped == () and len(r.steps) == 1
    step = r.steps[0]
    assert step.commands == (("nft", "-c", "-f", nft_dsr.SCRIPT_PATH),
                             ("nft", "-f", nft_dsr.SCRIPT_PATH))  # fmt: skip
    assert step.writes[0].content == (DATA / "nft-dsr-replace.nft").read_text()
    assert step.undo == (("nft", "delete", "table", "netdev", "shoal_dsr"),)


def test_captured_table_reads_back_in_sync() -> None:
    assert _plan_table(_args(), CAPTURED).steps == ()
    model = decode_table(CAPTURED, "eth0")
    assert model == table_from_args(DsrTableArgs.model_validate(_args()))


def test_weight_change_updates_chains_and_keeps_flow_maps() -> None:
    r = _plan_table(_args(w1=0, w2=1), CAPTURED)
    apply, *drains = r.steps
    script = apply.writes[0].content
    assert (
        "delete table" not in script
        and "flush chain netdev shoal_dsr svc_tcp_10_77_0_100_80" in script
    )
    assert "add map netdev shoal_dsr flows_tcp_10_77_0_100_80" in script
    assert f"mod 1 map {{ 0 : {MACS['web2']} }}" in script
    # The undo restores the previous table from its read-back model.
    assert apply.undo == (("nft", "-f", nft_dsr.UNDO_PATH),)
    assert apply.writes[1].content == (DATA / "nft-dsr-replace.nft").read_text()
    # web1 lost its buckets: wait for its established flows (bounded), after the apply.
    assert [d.id.rsplit("/", 1)[1] for d in drains] == [MACS["web1"]]
    argv = drains[0].commands[0]
    assert argv[:2] == ("sh", "-c") and argv[4:] == (
        "shoal_dsr", "flows_tcp_10_77_0_100_80", MACS["web1"], "30")  # fmt: skip
    assert drains[0].require == (apply.id,)


def test_removed_service_is_deleted_in_the_same_transaction() -> None:
    args = _args()
    args["services"] = args["services"][:1]
    script = _plan_table(args, CAPTURED).steps[0].writes[0].content
    assert script.endswith(
        "flush chain netdev shoal_dsr svc_udp_10_77_0_101_53\n"
        "delete chain netdev shoal_dsr svc_udp_10_77_0_101_53\n"
        "delete map netdev shoal_dsr flows_udp_10_77_0_101_53\n"
    )


def test_hand_edited_table_is_replaced() -> None:
    edited = CAPTURED.replace('"mod": 3', '"mod": 4')
    step = _plan_table(_args(), edited).steps[0]
    assert step.writes[0].content.startswith("add table netdev shoal_dsr\ndelete table")
    assert step.undo == ()  # only the executor's snapshot knows a foreign shape


def test_compile_unknown_mac_skips_table_and_vip() -> None:
    d = desired("nftables")
    f = {h: facts(h) for h in ("lvs1", "lvs2", "web1")}  # web2's facts are missing
    lows, steps, skipped = plan(d, f)
    assert steps == [] and not any(lw.function == "addr.present" for lw in lows)
    assert {s.host for s in skipped} == {"lvs1", "lvs2"}
    assert all("web2:eth0" in s.reason for s in skipped)


def test_compile_fresh_directors() -> None:
    d = desired("nftables")
    f = {h: facts(h) for h in ("lvs1", "lvs2", "web1", "web2", "web3")}
    lows, steps, skipped = plan(d, f)
    assert skipped == []
    assert [(s.host, s.phase) for s in steps] == [
        ("lvs1", Phase.DIRECTOR_PRIMARY), ("lvs2", Phase.DIRECTOR_BACKUP)]  # fmt: skip
    assert commands(steps, "lvs2") == [
        f"nft -c -f {nft_dsr.SCRIPT_PATH}",
        f"nft -f {nft_dsr.SCRIPT_PATH}",
    ]
    vip = [lw for lw in lows if lw.function == "addr.present"]
    assert [(v.host, v.args["address"], v.require) for v in vip] == [
        ("lvs1", "10.77.0.100", ("nft-dsr",))]  # fmt: skip
    assert f"ether saddr set {MACS['lvs2']}" in steps[1].writes[0].content


def test_compile_former_director_loses_its_table() -> None:
    d = desired("ipvsadm")
    f = {"web3": facts("web3", ledger={"nft.dsr_table": ("netdev shoal_dsr",)},
                       nft=NftRuleset(tables=(NftTable(family="netdev", name="shoal_dsr",
                                                       canonical_json=CAPTURED),)))}  # fmt: skip
    lows, steps, _ = plan(d, f)
    assert [lw.function for lw in lows if lw.host == "web3"] == [nft_dsr.ABSENT_FUNCTION]
    assert commands(steps, "web3") == ["nft delete table netdev shoal_dsr"]
    assert steps[-1].undo == (("nft", "-f", nft_dsr.UNDO_PATH),)
