"""Round trips of an apply, counted per host on the transport (`shoal apply --yes`'s path).

The plan's facts are gathered on the transport the apply then uses and handed to apply_plan
(`facts=`), so a host sees: ONE channel for its facts, ONE channel per phase it has steps in
(the phase script), and for a phase that armed the lock-out timer ONE new connection carrying
the confirmation. A host with steps in a later phase is read again first (the proof of that
phase's rollback needs its pre-phase facts), one channel more per such phase. fixtures/config-
repo is applied to the session lab and removed again at the end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lab import Lab
from reconciler.apply.executor import apply_plan
from reconciler.apply.snapshot_targets import needs_lockout
from reconciler.cli.apply import gather_and_plan
from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.plan.steps import Plan
from reconciler.transport.ssh import SSHTransport

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "config-repo"


def _repo(lab: Lab, dest: Path, *, with_cluster: bool) -> Desired:
    lab.write_config_repo(FIXTURE, dest)
    settings = dest / "shoal.toml"
    text = settings.read_text().replace("lockout_timeout = 60", "lockout_timeout = 5")
    settings.write_text(text.replace("[verify]\n", "[verify]\nenabled = false\n"))
    if not with_cluster:
        shutil.rmtree(dest / "clusters")
        (dest / "clusters").mkdir()
    return load_repository(dest)


def _expected(plan: Plan, host: str) -> tuple[int, int]:
    """(channels, connections) the apply of `plan` may open to `host`, facts included."""
    steps = plan.hosts[host].steps
    phases = sorted({s.phase for s in steps})
    confirmations = sum(needs_lockout([s for s in steps if s.phase == p]) for p in phases)
    regathers = max(len(phases) - 1, 0)
    # facts + a script per phase + facts again before each later phase + confirmations (each
    # on its own new connection, one channel there)
    channels = 1 + len(phases) + regathers + confirmations
    return channels, 1 + confirmations


async def _apply_counted(lab: Lab, desired: Desired) -> tuple[Plan, SSHTransport, bool]:
    async with SSHTransport(desired.inventory, desired.known_hosts, lab.client_key_path) as t:
        plan, facts = await gather_and_plan(desired, t)
        result = await apply_plan(plan, desired, t, check_stale=True, facts=facts)
        return plan, t, result.ok


async def test_apply_reads_each_host_once_and_runs_one_script_per_phase(
    lab: Lab, tmp_path_factory: pytest.TempPathFactory
) -> None:
    desired = _repo(lab, tmp_path_factory.mktemp("repo"), with_cluster=True)
    empty = _repo(lab, tmp_path_factory.mktemp("empty"), with_cluster=False)
    try:
        plan, t, ok = await _apply_counted(lab, desired)
        assert ok
        changed = [h for h, hp in plan.hosts.items() if hp.steps]
        assert changed, "the fixture repository changes the lab hosts"
        for host in sorted(desired.inventory.hosts):
            # A host without steps: its facts, for the plan; nothing to apply.
            expected = _expected(plan, host) if host in changed else (1, 1)
            got = (t.channels_opened[host], t.connections_opened[host])
            assert got == expected, (host, got, expected)
        # A host with one phase: exactly facts + phase script (+ one confirmation connection).
        single = [h for h in changed if len({s.phase for s in plan.hosts[h].steps}) == 1]
        assert single
        for host in single:
            lockout = needs_lockout(plan.hosts[host].steps)
            assert t.channels_opened[host] == 2 + lockout
            assert t.connections_opened[host] == 1 + lockout
    finally:
        _, _, ok = await _apply_counted(lab, empty)
        assert ok
