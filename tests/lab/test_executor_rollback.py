"""The executor on a real lab host with hand-built steps: apply, fail at every step, hang.

Each test changes web3 of the session lab and must leave it as it found it: a failure is
rolled back by the executor (that is what is tested), a success is undone by applying the
reverse steps through the executor again.
"""

from __future__ import annotations

import time

import pytest

from lab import Lab
from reconciler.apply.executor import apply_plan
from tests.lab.executor_support import (
    apply_steps,
    desired_for,
    explain,
    failing_hook,
    joined_steps,
    make_plan,
    raw_state,
    step,
    transport_for,
    undo_phase,
    vip,
)

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

HOST = "web3"
N_STEPS = 7


async def test_apply_succeeds_and_reports_every_step(lab: Lab) -> None:
    before = await raw_state(lab, HOST)
    steps = await joined_steps(lab, HOST)
    desired = desired_for(lab, lockout_timeout=5, command_timeout=10)
    async with transport_for(lab, desired) as t:
        channels = t.channels_opened[HOST]
        result = await apply_plan(make_plan({HOST: steps}), desired, t)
        # One channel for the phase; the confirmation came over a new connection.
        assert t.channels_opened[HOST] - channels >= 2
    try:
        assert result.ok, explain(result)
        assert [s.result for s in result.hosts[HOST]] == [True] * N_STEPS
        assert all(s.changes["after"] for s in result.hosts[HOST])
        (phase,) = result.phases
        assert phase.lockout == "confirmed"
        assert phase.backup_dir.startswith(f"/var/lib/shoal/backups/{result.plan_id}/")
        assert {"arptables", "iptables_nat", "nft", "addr.0", "sysctl", "file.0"} <= set(
            phase.snapshot
        )
        after = await raw_state(lab, HOST)
        assert f"{vip(lab)}/32" not in before["addr"]
        assert f'"local":"{vip(lab)}"' in after["addr"]
        assert "shoal_exectest" in after["nft"]
        assert "net.ipv4.conf.all.arp_announce = 2" in after["sysctl"]
        # The lock-out timer is disarmed: nothing restores the host behind our back.
        pid = await lab.exec(HOST, ["sh", "-c", "ls /var/lib/shoal/lockout-*.pid"], check=False)
        assert pid.returncode != 0, pid.stdout
    finally:
        await undo_phase(lab, result.plan_id, (HOST,))
    assert await raw_state(lab, HOST) == before


@pytest.mark.parametrize("failing", range(N_STEPS))
async def test_failure_at_each_step_restores_the_host_byte_for_byte(lab: Lab, failing: int) -> None:
    before = await raw_state(lab, HOST)
    steps = await joined_steps(lab, HOST)
    async with failing_hook(lab, HOST, failing, exit_code=3):
        result = await apply_steps(lab, {HOST: steps}, lockout_timeout=5, command_timeout=10)
    after = await raw_state(lab, HOST)
    assert after == before, explain(result)
    assert not result.ok
    results = [s.result for s in result.hosts[HOST]]
    assert results == [True] * failing + [False] + [None] * (N_STEPS - failing - 1)
    failed = result.hosts[HOST][failing]
    assert failed.exit_status == 3 and "exited 3" in failed.comment
    assert "injected failure" in failed.output
    assert all(s.rolled_back for s in result.hosts[HOST][:failing])
    (rb,) = result.rollbacks
    assert rb.by == "phase" and rb.proven, rb.differences
    assert rb.digest_before == rb.digest_after
    assert [e.kind for e in result.errors] == ["ApplyError"]
    assert result.errors[0].step_id == steps[failing].id


async def test_failing_real_command_is_rolled_back(lab: Lab) -> None:
    """No injection: the kernel refuses the last step's command (no such device)."""
    before = await raw_state(lab, HOST)
    steps = await joined_steps(lab, HOST)
    bad = step(
        HOST,
        N_STEPS,
        "addr",
        [("ip", "addr", "add", f"{vip(lab, 178)}/32", "dev", "nosuchdev0")],
        [("ip", "addr", "del", f"{vip(lab, 178)}/32", "dev", "nosuchdev0")],
        with_hook=False,
    )
    result = await apply_steps(lab, {HOST: [*steps, bad]}, lockout_timeout=5, command_timeout=10)
    assert await raw_state(lab, HOST) == before, explain(result)
    assert result.hosts[HOST][-1].result is False
    assert "nosuchdev0" in result.hosts[HOST][-1].output
    assert result.rollbacks[0].proven


async def test_hanging_command_is_stopped_by_the_timeout_and_rolled_back(lab: Lab) -> None:
    before = await raw_state(lab, HOST)
    steps = await joined_steps(lab, HOST)
    async with failing_hook(lab, HOST, 4, hang=True):
        started = time.monotonic()
        result = await apply_steps(lab, {HOST: steps}, lockout_timeout=5, command_timeout=2)
    elapsed = time.monotonic() - started
    assert await raw_state(lab, HOST) == before, explain(result)
    hung = result.hosts[HOST][4]
    assert hung.result is False and hung.comment.startswith("timed out after 2s"), hung
    assert result.rollbacks[0].proven
    assert elapsed < 20, elapsed
