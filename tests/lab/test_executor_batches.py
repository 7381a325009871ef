"""Batches, director order and unreachable hosts, on the real lab hosts (hand-built steps).

Real servers web1..web3 each get the same join steps; a failure injected on one of them stops
the rollout, and the hosts the policy rolls back must be byte-identical to before.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from lab import Lab
from reconciler.apply.events import ApplyEvent
from reconciler.plan.steps import Phase, Step
from tests.lab.executor_support import (
    apply_steps,
    explain,
    failing_hook,
    joined_steps,
    raw_state,
    step,
    undo_phase,
)

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

SERVERS = ("web1", "web2", "web3")


async def _join_steps(lab: Lab, hosts: Sequence[str]) -> dict[str, list[Step]]:
    return {h: await joined_steps(lab, h) for h in hosts}


async def test_failed_last_batch_rolls_back_finished_batches(lab: Lab) -> None:
    before = {h: await raw_state(lab, h) for h in SERVERS}
    steps = await _join_steps(lab, SERVERS)
    events: list[ApplyEvent] = []
    async with failing_hook(lab, "web3", 3):
        result = await apply_steps(
            lab,
            steps,
            on_event=events.append,
            batch_size=1,
            lockout_timeout=5,
            command_timeout=10,
        )
    for h in SERVERS:
        assert await raw_state(lab, h) == before[h], (h, explain(result))
    assert not result.ok
    # One host at a time, in order; the failure's own rollback, then the finished batches newest
    # first, each proven.
    starts = [e.host for e in events if e.kind == "host-start"]
    assert starts == ["web1", "web2", "web3"]
    assert [(r.host, r.by, r.proven) for r in result.rollbacks] == [
        ("web3", "phase", True),
        ("web2", "controller", True),
        ("web1", "controller", True),
    ], explain(result)
    assert [p.batch for p in result.phases] == [0, 1, 2]
    assert all(s.rolled_back for h in ("web1", "web2") for s in result.hosts[h])


async def test_keep_policy_keeps_finished_batches(lab: Lab) -> None:
    before = {h: await raw_state(lab, h) for h in SERVERS}
    steps = await _join_steps(lab, SERVERS)
    async with failing_hook(lab, "web3", 5):
        result = await apply_steps(
            lab, steps, batch_size=2, finished_batches="keep", lockout_timeout=5, command_timeout=10
        )
    try:
        assert not result.ok
        assert await raw_state(lab, "web3") == before["web3"]
        for h in ("web1", "web2"):
            assert await raw_state(lab, h) != before[h]
            assert all(s.result and not s.rolled_back for s in result.hosts[h])
        assert [(r.host, r.proven) for r in result.rollbacks] == [("web3", True)]
    finally:
        await undo_phase(lab, result.plan_id, ("web1", "web2"))
    for h in ("web1", "web2"):
        assert await raw_state(lab, h) == before[h]


async def test_failure_inside_a_batch_rolls_back_its_batch_mates(lab: Lab) -> None:
    before = {h: await raw_state(lab, h) for h in SERVERS}
    steps = await _join_steps(lab, SERVERS)
    async with failing_hook(lab, "web2", 6):
        result = await apply_steps(lab, steps, batch_size=2, lockout_timeout=5, command_timeout=10)
    for h in SERVERS:
        assert await raw_state(lab, h) == before[h], h
    assert {(r.host, r.by, r.proven) for r in result.rollbacks} == {
        ("web2", "phase", True),
        ("web1", "controller", True),
    }
    assert all(s.result is None for s in result.hosts["web3"])
    assert "rollout stopped" in result.hosts["web3"][0].comment


async def test_backup_director_changes_before_primary(lab: Lab) -> None:
    marker = "/var/lib/shoal-exec-test-order"
    touch = [("sh", "-c", f"date +%s%N >>{marker}")]
    plan_steps = {
        "lvs1": [step("lvs1", 0, "service", touch, [], phase=Phase.DIRECTOR_PRIMARY,
                      with_hook=False)],
        "lvs2": [step("lvs2", 0, "service", touch, [], phase=Phase.DIRECTOR_BACKUP,
                      with_hook=False)],
    }  # fmt: skip
    events: list[ApplyEvent] = []
    try:
        result = await apply_steps(lab, plan_steps, on_event=events.append)
        assert result.ok, explain(result)
        assert [e.host for e in events if e.kind == "host-start"] == ["lvs2", "lvs1"]
        assert [p.phase for p in result.phases] == ["director_backup", "director_primary"]
        t2 = int((await lab.exec("lvs2", ["cat", marker])).stdout)
        t1 = int((await lab.exec("lvs1", ["cat", marker])).stdout)
        assert t2 < t1
        # Only service steps: nothing could lock the controller out, so no timer was armed.
        assert all(p.lockout == "none" for p in result.phases)
    finally:
        for h in ("lvs1", "lvs2"):
            await lab.exec(h, ["rm", "-f", marker])


@pytest.mark.parametrize("policy", ["stop", "continue"])
async def test_unreachable_host_at_the_start(lab: Lab, policy: str) -> None:
    before = {h: await raw_state(lab, h) for h in ("web2", "web3")}
    steps = await _join_steps(lab, ("web2", "web3"))
    await lab.set_link("web2", False)
    try:
        # lvs2 was already unknown when the plan was made; web2 goes away after it.
        result = await apply_steps(
            lab,
            steps,
            unreachable=["lvs2"],
            unreachable_hosts=policy,
            lockout_timeout=5,
            command_timeout=10,
            connect_timeout=1,
        )
    finally:
        await lab.set_link("web2", True)
    try:
        assert not result.ok
        assert result.unreachable == ["lvs2", "web2"]
        assert all(s.result is None for s in result.hosts["web2"])
        assert "unreachable" in result.hosts["web2"][0].comment
        assert await raw_state(lab, "web2") == before["web2"]
        if policy == "stop":
            assert all(s.result is None for s in result.hosts["web3"])
            assert await raw_state(lab, "web3") == before["web3"]
        else:
            assert all(s.result for s in result.hosts["web3"]), explain(result)
            assert await raw_state(lab, "web3") != before["web3"]
    finally:
        if policy == "continue":
            await undo_phase(lab, result.plan_id, ("web3",))
    assert await raw_state(lab, "web3") == before["web3"]
