"""Lock-out protection on a real lab host: the host heals itself when the controller is gone.

Two ways to lose the controller: the host's link goes down in the middle of a phase (its timer
restores it once the phase's last step is N seconds old), and a phase that blocks new SSH
connections (the confirmation over a NEW connection fails, so the timer restores it, and the
controller proves the result once it can log in again).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from lab import Lab
from reconciler.apply.executor import apply_plan
from reconciler.apply.host_phase import phase_dir
from reconciler.plan.steps import Phase
from tests.lab.executor_support import (
    apply_steps,
    desired_for,
    explain,
    filter_rules,
    hook,
    install_hooks,
    joined_steps,
    make_plan,
    raw_state,
    ssh_blocking_step,
    transport_for,
    undo_phase,
    vip,
)

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

HOST = "web3"
LOCKOUT = 5
LONG_STEP = 4  # index of the step whose hook sleeps
SLEEP = 3


async def _wait_for(lab: Lab, path: str, limit: float) -> float:
    """Seconds until `path` exists on the host (looked at from inside, not over SSH)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if (await lab.exec(HOST, ["test", "-e", path], check=False)).returncode == 0:
            return time.monotonic() - start
        await asyncio.sleep(0.2)
    raise AssertionError(f"{path} did not appear within {limit}s")


async def test_link_cut_mid_phase_host_restores_itself_then_next_apply_converges(
    lab: Lab,
) -> None:
    before = await raw_state(lab, HOST)
    steps = await joined_steps(lab, HOST)
    await lab.exec(
        HOST, ["sh", "-c", f"printf '#!/bin/sh\\nsleep {SLEEP}\\n' >{hook(HOST, LONG_STEP)}"]
    )
    plan = make_plan({HOST: steps})
    b = phase_dir(plan.id, Phase.REAL_SERVERS_PREPARE)
    desired = desired_for(lab, lockout_timeout=LOCKOUT, command_timeout=10, connect_timeout=2)
    async with transport_for(lab, desired) as t:
        task = asyncio.create_task(apply_plan(plan, desired, t))
        try:
            await _wait_for(lab, f"{b}/progress/{LONG_STEP}.started", 10)
            await lab.set_link(HOST, False)
            # The phase goes on without the controller, then nobody confirms it.
            healed = await _wait_for(lab, f"{b}/restore.done", SLEEP + LOCKOUT + 5)
            assert healed <= SLEEP + LOCKOUT + 2, healed
            # With the link down eth0 reports NO-CARRIER, so addresses are compared later.
            now = await raw_state(lab, HOST)
            assert {k: v for k, v in now.items() if k != "addr"} == {
                k: v for k, v in before.items() if k != "addr"
            }
            assert f'"local":"{vip(lab)}"' not in now["addr"]
            owner = await lab.exec(HOST, ["cat", f"{b}/restore.lock/by"])
            assert owner.stdout.strip() == "timer"
        finally:
            await lab.set_link(HOST, True)
        result = await asyncio.wait_for(task, 90)
    assert not result.ok
    assert result.hosts[HOST][LONG_STEP].result is True
    (rb,) = result.rollbacks
    assert rb.by == "timer" and rb.proven, explain(result)
    assert await raw_state(lab, HOST) == before

    # The next apply of the same steps converges, and is confirmed in time.
    await install_hooks(lab, HOST, len(steps))
    async with transport_for(lab, desired) as t:
        again = await apply_plan(make_plan({HOST: steps}), desired, t)
    try:
        assert again.ok, explain(again)
        assert again.phases[0].lockout == "confirmed"
        await asyncio.sleep(1)  # a live timer would still be waiting; it must be gone
        pids = await lab.exec(HOST, ["sh", "-c", "cat /var/lib/shoal/lockout-*.pid"], check=False)
        assert pids.returncode != 0, pids.stdout
    finally:
        await undo_phase(lab, again.plan_id, (HOST,))
    assert await raw_state(lab, HOST) == before


async def test_phase_that_blocks_new_ssh_logins_is_undone_by_the_timer(lab: Lab) -> None:
    """The channel in use keeps working; only the confirmation's new connection fails."""
    before = await raw_state(lab, HOST)
    steps = [ssh_blocking_step(HOST)]
    filter_before = await filter_rules(lab, HOST)
    started = time.monotonic()
    result = await apply_steps(
        lab, {HOST: steps}, lockout_timeout=LOCKOUT, command_timeout=5, connect_timeout=1
    )
    elapsed = time.monotonic() - started
    assert not result.ok
    assert result.hosts[HOST][0].result is True and result.hosts[HOST][0].rolled_back
    (rb,) = result.rollbacks
    assert rb.by == "timer" and rb.proven, explain(result)
    assert "no new SSH connection" in result.errors[0].message
    assert result.phases[0].lockout == "fired"
    assert await raw_state(lab, HOST) == before
    assert await filter_rules(lab, HOST) == filter_before
    assert elapsed < 30, elapsed
