"""Real plans (loader, facts, planner) applied by the executor on the lab hosts.

fixtures/config-repo (nftables director on lvs1/lvs2, sysctl ARP method on web1/web2) is
applied to the session lab: after the apply the plan is empty; after a simulated reboot
(runtime state flushed, /usr/local/sbin/shoal-restore run) the plan is empty again; a failure
injected on web2 rolls back web2 and the finished batch (web1) byte for byte. The module
removes the cluster again at the end (a plan from the same repository without clusters/).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab import Lab
from reconciler.apply.executor import apply_plan
from reconciler.apply.runresult import RunResult
from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.facts.gather import gather_facts
from reconciler.plan.compile import managed_paths
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import Plan
from reconciler.transport.ssh import SSHTransport
from tests.lab.executor_support import raw_state

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "config-repo"
REAL_SERVERS = ("web1", "web2")
DIRECTORS = ("lvs1", "lvs2")
HOSTS = (*DIRECTORS, *REAL_SERVERS)


def _explain(result: RunResult) -> str:
    return result.model_dump_json(indent=1, exclude={"phases"})


def _repo(lab: Lab, dest: Path, *, with_cluster: bool = True) -> Desired:
    lab.write_config_repo(FIXTURE, dest)
    # Quick lock-out timer and timeouts for tests.
    settings = dest / "shoal.toml"
    settings.write_text(settings.read_text().replace("lockout_timeout = 60", "lockout_timeout = 5"))
    # No lab HTTP service runs here, so no verification phase (test_executor_verify has it).
    settings.write_text(settings.read_text().replace("[verify]\n", "[verify]\nenabled = false\n"))
    if not with_cluster:
        shutil.rmtree(dest / "clusters")
        (dest / "clusters").mkdir()
    return load_repository(dest)


async def _plan(desired: Desired, t: SSHTransport) -> Plan:
    facts = await gather_facts(t, sorted(desired.inventory.hosts), managed_paths(desired))
    return plan_desired(desired, facts)


async def _apply(lab: Lab, desired: Desired) -> tuple[RunResult, Plan]:
    """Plan and apply; returns the run and the plan made right after it."""
    async with SSHTransport(desired.inventory, desired.known_hosts, lab.client_key_path) as t:
        result = await apply_plan(await _plan(desired, t), desired, t, check_stale=True)
        return result, await _plan(desired, t)


@pytest.fixture(scope="module")
async def pristine(
    lab: Lab, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, dict[str, str]]]:
    """The hosts' raw state before the module; the cluster is removed again afterwards."""
    before = {h: await raw_state(lab, h) for h in HOSTS}
    yield before
    empty = _repo(lab, tmp_path_factory.mktemp("empty-repo"), with_cluster=False)
    result, after = await _apply(lab, empty)
    assert result.ok, _explain(result)
    assert after.empty
    # The runtime state is back; files the planner leaves on removal (an empty ledger, the
    # director's rendered nft file) are its business, not compared here.
    for h in HOSTS:
        now = await raw_state(lab, h)
        assert {k: v for k, v in now.items() if k != "files"} == {
            k: v for k, v in before[h].items() if k != "files"
        }, h


async def test_apply_converges_and_survives_a_reboot(
    lab: Lab, pristine: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    desired = _repo(lab, tmp_path / "repo")
    result, after = await _apply(lab, desired)
    assert result.ok, _explain(result)
    assert after.empty, [s.id for hp in after.hosts.values() for s in hp.steps]
    # Real servers before the backup director before the primary.
    order = [p.phase for p in result.phases]
    assert order == sorted(order, key=["real_servers_prepare", "director_backup",
                                       "director_primary"].index)  # fmt: skip
    assert all(p.lockout == "confirmed" for p in result.phases if p.host in REAL_SERVERS)

    # Reboot simulation: our runtime state goes away, shoal-restore brings it back.
    vip = desired.clusters["web"].services[0].vip
    for h in REAL_SERVERS:
        await lab.exec(h, ["ip", "addr", "del", f"{vip}/32", "dev", "lo"])
        await lab.exec(h, ["sysctl", "-w", "net.ipv4.conf.all.arp_ignore=0",
                           "net.ipv4.conf.all.arp_announce=0", "net.ipv4.conf.eth0.arp_ignore=0",
                           "net.ipv4.conf.eth0.arp_announce=0"])  # fmt: skip
    await lab.exec("lvs1", ["ip", "addr", "del", f"{vip}/32", "dev", "eth0"])
    for h in DIRECTORS:
        await lab.exec(h, ["nft", "delete", "table", "netdev", "shoal_dsr"])
    async with SSHTransport(desired.inventory, desired.known_hosts, lab.client_key_path) as t:
        flushed = await _plan(desired, t)
        assert {h for h, hp in flushed.hosts.items() if hp.steps} == set(HOSTS)
        for h in HOSTS:
            await lab.exec(h, ["/usr/local/sbin/shoal-restore"])
        assert (await _plan(desired, t)).empty


async def test_failure_in_a_real_plan_rolls_back_host_and_finished_batch(
    lab: Lab, pristine: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    empty = _repo(lab, tmp_path / "empty", with_cluster=False)
    cleared, _ = await _apply(lab, empty)
    assert cleared.ok, _explain(cleared)
    before = {h: await raw_state(lab, h) for h in HOSTS}
    desired = _repo(lab, tmp_path / "repo")
    # web2's `systemctl enable` (its 9th step) fails; web1 (batch 1) has finished by then.
    await lab.inject_failing_command("web2", "/usr/bin/systemctl", exit_code=4)
    try:
        async with SSHTransport(desired.inventory, desired.known_hosts, lab.client_key_path) as t:
            result = await apply_plan(await _plan(desired, t), desired, t)
    finally:
        await lab.clear_injections("web2")
    for h in HOSTS:
        assert await raw_state(lab, h) == before[h], (h, _explain(result))
    assert not result.ok
    assert [(r.host, r.by, r.proven) for r in result.rollbacks] == [
        ("web2", "phase", True),
        ("web1", "controller", True),
    ], _explain(result)
    failed = [s for s in result.hosts["web2"] if s.result is False]
    assert len(failed) == 1 and "systemctl enable" in failed[0].comment
    # The directors were never touched: the rollout stopped in the real-server phase.
    assert all(s.result is None for h in DIRECTORS for s in result.hosts[h])


async def test_cli_apply_yes_json(
    lab: Lab, pristine: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    _repo(lab, repo)
    shoal = str(Path(sys.executable).parent / "shoal")
    cmd = [shoal, "apply", str(repo), "--yes", "--json", "--key", str(lab.client_key_path)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert '"ok": true' in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert '"run": null' in again.stdout
    # Without --yes and without a terminal the answer is no: nothing is applied.
    _repo(lab, repo, with_cluster=False)
    refused = subprocess.run(
        [*cmd[:-4], "--key", str(lab.client_key_path)],
        input="n\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "not applied" in refused.stdout
