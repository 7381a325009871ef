"""Zero-loss changes under real client traffic, nftables director backend (issue 6, part 4 a-c).

Every change goes through the real code path (config repo -> loader -> facts -> plan_desired ->
apply_plan) while client1 sends a bounded stream of short HTTP requests (a new connection each,
four probe processes at once) to the VIP (`rollout_support.under_load`). For each change: no
request may fail, every real server that should serve did serve (counts per real server), and
the change really happened (the plan is empty afterwards, the distribution moved).

(a) a real server joins; (b) one is drained and removed while long-lived connections to it are
open: the drain must wait for them to end (not for its timeout), and they must complete;
(c) weights change. The ARP method change (d) is in test_rollout_arp_method.py.

The tests share one lab of the module's own and run in order, each first making sure of its
starting point (`Rollout.ensure`, a no-op when the previous test left it there).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab.httpd import run_load
from reconciler.apply.events import ApplyEvent
from tests.lab.rollout_support import PORT, Rollout, assert_lossless, explain, rollout_lab

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

DRAIN_TIMEOUT = 30  # seconds; the drain in (b) must end long before it
SLOW_CLIENT = Path(__file__).with_name("slow_client.py")


@pytest.fixture(scope="module")
async def rollout(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rollout]:
    async with rollout_lab(tmp_path_factory, drain_timeout=DRAIN_TIMEOUT) as r:
        yield r


async def test_a_adding_a_real_server_loses_nothing(rollout: Rollout) -> None:
    await rollout.ensure({"web1": 1, "web2": 2})
    result, load = await rollout.change({"web1": 1, "web2": 2, "web3": 2})
    assert_lossless(load, {"web1", "web2", "web3"})
    # web3 got traffic only once it had joined, and keeps getting it.
    assert load.after["web3"] > 0, load.summary()
    assert any(s.id.startswith("web3/vip-") and s.result for s in result.steps())


async def test_b_drain_waits_for_connections_and_loses_nothing(rollout: Rollout) -> None:
    lab = rollout.lab
    await rollout.ensure({"web1": 1, "web2": 2, "web3": 2})
    stop_file = f"/tmp/shoal-slow-{secrets.token_hex(3)}"
    # Long-lived connections, open when the drain starts; 2 of the 5 buckets are web3's, so
    # with 16 of them some land on web3 (all 16 missing it: 3 in 10000).
    slow = asyncio.ensure_future(
        lab.exec("client1", ["python3", "-", "--vip", rollout.vip, "--connections", "16",
                             "--until", stop_file, "--max-hold", "25"],
                 input=SLOW_CLIENT.read_text())
    )  # fmt: skip
    give_up = time.monotonic() + 20
    while time.monotonic() < give_up:
        on_web3 = await lab.exec("web3", ["ss", "-Htn", "state", "established",
                                          f"( sport = :{PORT} )"])  # fmt: skip
        if rollout.vip in on_web3.stdout:
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("no long-lived connection landed on web3")

    # The long-lived connections end 1.5 s after the primary director's phase began (its table
    # no longer sends web3 anything new; its drain step is waiting).
    primary_started = asyncio.Event()
    marks: dict[str, float] = {}

    def on_event(event: ApplyEvent) -> None:
        if event.kind == "host-start" and event.host == "lvs1":
            marks["primary_start"] = time.time()
            primary_started.set()
        if event.kind == "host-done" and event.host == "lvs1":
            marks["primary_done"] = time.time()

    async def release() -> None:
        await primary_started.wait()
        await asyncio.sleep(1.5)
        await lab.exec("client1", ["touch", stop_file])

    releaser = asyncio.ensure_future(release())
    try:
        result, load = await rollout.change({"web1": 1, "web2": 2}, on_event=on_event)
    finally:
        releaser.cancel()
        await lab.exec("client1", ["touch", stop_file])
    slow_results = json.loads((await slow).stdout)
    assert_lossless(load, {"web1", "web2", "web3"})
    assert "web3" not in load.after, load.summary()
    # Every long-lived connection completed, some of them on web3: drained, not cut.
    assert all(r["ok"] for r in slow_results), slow_results
    on_drained = [float(r["ended"]) for r in slow_results if r["server"] == "web3"]
    assert on_drained, slow_results
    # The drain on the primary waited for them: they ended during its phase, and the drain
    # ended because they had (seconds later), not because its timeout ran out.
    assert marks["primary_start"] < max(on_drained) < marks["primary_done"], (marks, on_drained)
    drains = [s for s in result.steps() if s.host == "lvs1" and "/drain/" in s.id]
    assert len(drains) == 1 and drains[0].result, explain(result)
    drained = drains[0].duration or 0.0
    assert 1.5 <= drained < DRAIN_TIMEOUT - 5, (drained, explain(result))
    removed = [s for s in result.steps() if s.id.startswith("web3/remove-addr-")]
    assert removed and removed[0].result, explain(result)
    print(f"drain of web3 on lvs1 took {drained:.1f}s (timeout {DRAIN_TIMEOUT}s)")


async def test_c_weight_change_loses_nothing_and_moves_traffic(rollout: Rollout) -> None:
    lab = rollout.lab
    await rollout.ensure({"web1": 1, "web2": 2})
    before = await run_load(lab, "client1", rollout.vip, PORT, count=200)
    _, load = await rollout.change({"web1": 3, "web2": 1})
    after = await run_load(lab, "client1", rollout.vip, PORT, count=200)
    assert_lossless(load, {"web1", "web2"})
    # web1 had a third of the buckets and now has three quarters (200 requests each: the
    # thresholds are more than four standard deviations away).
    assert before["failed"] == 0 and after["failed"] == 0, (before, after)
    share = [r["answered_by"].get("web1", 0) / r["ok"] for r in (before, after)]
    assert share[0] < 0.45 and share[1] > 0.6, (before, after)
    print(f"web1's share: {share[0]:.2f} before, {share[1]:.2f} after")
