"""`shoal serve` killed with SIGKILL during a real server's join, at every phase boundary and in
the middle of every phase, then restarted: the hosts (read by facts) must match the record.

One lab and one config repository for every kill point. The cluster first serves web1 and web2
(applied over HTTP); then a push makes web3 join: web3's `real_servers_prepare`, the backup
director lvs2's `director_backup`, the primary lvs1's `director_primary`. For each kill point the
pending plan is approved over HTTP and a watcher on the target host (a shell loop reading the
phase's own log and pid file) freezes that host's phase script at the chosen moment, so the kill
lands there by event, not by a sleep: "mid" at the middle step of the phase (its lock-out timer
armed), "boundary" right after the phase script started and before its first step, with every
earlier phase finished and confirmed. The server is then killed, restarted, and must record
every host `restored` or `untouched` with facts equal to the plan's pre-apply digests (read
again here over a fresh SSH transport), list the backups it found, and plan the same join again.
The recovery leaves the hosts at their pre-join state, which is the next case's start.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from lab import Lab, Topology
from reconciler.apply.host_phase import BACKUP_ROOT
from reconciler.desired.loader import load_repository
from reconciler.facts.gather import gather_facts
from reconciler.plan.compile import managed_paths
from reconciler.transport.connect import transport_for
from reconciler.transport.ssh import SSHTransport
from tests.lab.server_support import Repo, ServeProcess, set_in_file, sign, sysctl, web_toml

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

PHASES = {"web3": "20-real_servers_prepare", "lvs2": "30-director_backup",
          "lvs1": "40-director_primary"}  # fmt: skip
WAIT = 120.0  # seconds for one event (a plan, a frozen phase) on a busy 2-core machine

WEB3 = """
  [[service.real_server]]
  host = "web3"
  weight = 1
"""


@dataclass(frozen=True)
class KillPoint:
    host: str  # whose phase is frozen when the server is killed
    where: str  # "boundary": before its first step; "mid": at its middle step

    def __str__(self) -> str:
        return f"{self.where}-{PHASES[self.host]}"


KILL_POINTS = [
    KillPoint("web3", "mid"),
    KillPoint("lvs2", "boundary"),
    KillPoint("lvs2", "mid"),
    KillPoint("lvs1", "boundary"),
    KillPoint("lvs1", "mid"),
]


class Cluster:
    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab = lab
        self.repo = Repo(tmp, lab)
        self.serve = ServeProcess(lab, tmp, self.repo.bare)
        self.sha = ""
        # Not the server's: the hosts are read independently of what it records.
        self.transport: SSHTransport | None = None

    async def pending(self, sha: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            plans = await self.serve.get("/plans?state=pending")
            mine = [p for p in plans if p["revision"] == sha]
            if mine:
                plan: dict[str, Any] = await self.serve.get(f"/plans/{mine[0]['id']}")
                return plan
            await asyncio.sleep(0.1)
        raise AssertionError(f"no pending plan for {sha[:12]}")

    async def approve(self, plan_id: str) -> str:
        response = await self.serve.http.post(
            f"/plans/{plan_id}/approve",
            json={"comment": "lab"},
            headers=self.serve.auth("approver"),
        )
        assert response.status_code == 202, response.text
        return str(response.json()["run_id"])

    async def facts_digests(self) -> dict[str, str]:
        """Every host's facts digest, read now over the test's own SSH transport."""
        assert self.transport is not None
        desired = load_repository(self.repo.work)
        paths = managed_paths(desired)
        hosts = sorted(desired.inventory.hosts)
        facts = await gather_facts(self.transport, hosts, {h: paths.get(h, []) for h in hosts})
        return {h: f.digest() for h, f in facts.items()}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cluster(
    session_token: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    async with Lab.up(f"x{session_token}", Topology.default(), ephemeral=True) as lab:
        c = Cluster(lab, tmp_path_factory.mktemp("crash"))
        first = c.repo.push(lambda _: None, "web1 and web2")
        try:
            await c.serve.start()
            plan = await c.pending(first)
            run_id = await c.approve(plan["id"])
            deadline = time.monotonic() + WAIT
            while (run := await c.serve.get(f"/runs/{run_id}"))["state"] == "applying":
                assert time.monotonic() < deadline, "the first apply did not end"
                await asyncio.sleep(0.2)
            assert run["state"] == "applied", run
            c.sha = c.repo.push(
                lambda root: set_in_file(web_toml(root), r"(  weight = 2\n)", "\\1" + WEB3),
                "web3 joins",
            )
            body = b'{"ref":"refs/heads/main"}'
            hook = await c.serve.http.post(
                "/webhooks/git", content=body, headers={"X-Hub-Signature-256": sign(body)}
            )
            assert hook.status_code == 202, hook.text
            desired = load_repository(c.repo.work)
            async with transport_for(desired, lab.client_key_path) as c.transport:
                yield c
        finally:
            await c.serve.stop()
            await c.serve.http.aclose()


def freeze_script(phase_dir: str, where: str, step: int) -> str:
    """Wait on the host for the moment, then stop the phase's whole session (SIGSTOP)."""
    event = (
        '[ -s "$B/phase.pid" ]'
        if where == "boundary"
        else f'grep -q " step-begin {step} " "$B/phase.log" 2>/dev/null'
    )
    return (
        f"B={phase_dir}\n"
        f"end=$(( $(date +%s) + {int(WAIT)} ))\n"
        f"until {event}; do\n"
        '  [ "$(date +%s)" -lt "$end" ] || { echo timeout; exit 1; }\n'
        "  sleep 0.01\n"
        "done\n"
        'kill -STOP -"$(cat "$B/phase.pid")"\n'
        'grep -c " step-begin " "$B/phase.log" 2>/dev/null || echo 0\n'
    )


async def lock_owner(lab: Lab, host: str, phase_dir: str) -> str:
    res = await lab.exec(host, ["cat", f"{phase_dir}/restore.lock/by"], check=False)
    return res.stdout.strip() if res.returncode == 0 else "none"


@pytest.mark.parametrize("point", KILL_POINTS, ids=str)
async def test_kill_during_join_rolls_every_host_back_and_says_so(
    cluster: Cluster, point: KillPoint
) -> None:
    lab, serve = cluster.lab, cluster.serve
    plan = await cluster.pending(cluster.sha)
    before = plan["fact_digests"]
    if point == KILL_POINTS[0]:
        # Later cases start where the previous one's recovery left the hosts (checked there).
        start = await cluster.facts_digests()
        assert {h: start[h] for h in before} == before, "not at the pre-join state"
    changed = {h for h, hp in plan["hosts"].items() if hp["steps"]}
    assert {"web3", "lvs1", "lvs2"} <= changed, sorted(changed)
    steps = plan["hosts"][point.host]["steps"]
    phase_dir = f"{BACKUP_ROOT}/{plan['id']}/{PHASES[point.host]}"
    middle = len(steps) // 2
    freeze = ["sh", "-c", freeze_script(phase_dir, point.where, middle)]
    watcher = asyncio.create_task(lab.exec(point.host, freeze, timeout=WAIT + 10))
    run_id = await cluster.approve(plan["id"])
    frozen = await watcher
    assert frozen.returncode == 0, (frozen.stdout, await serve.get(f"/runs/{run_id}"))
    serve.kill()
    # What the hosts were at the kill: earlier phases confirmed, this one as chosen.
    started = int(frozen.stdout.split()[-1])
    if point.where == "boundary":
        assert started == 0, frozen.stdout
    else:
        assert started >= middle + 1, frozen.stdout
    order = list(PHASES)
    for earlier in order[: order.index(point.host)]:
        d = f"{BACKUP_ROOT}/{plan['id']}/{PHASES[earlier]}"
        assert await lock_owner(lab, earlier, d) == "confirmed", earlier

    await serve.start()
    run = await serve.get(f"/runs/{run_id}")
    assert run["state"] == "interrupted", run
    recovery = run["recovery"]
    assert "error" not in recovery, recovery
    now = await cluster.facts_digests()
    for host, entry in recovery["hosts"].items():
        # The record says what the facts say, host by host.
        assert entry["state"] in ("restored", "untouched"), (host, entry)
        assert now[host] == before[host], (host, entry)
        touched = order.index(host) <= order.index(point.host) if host in PHASES else False
        assert entry["state"] == ("restored" if touched else "untouched"), (host, entry)
    assert recovery["outcome"] == "rolled_back", recovery
    # What the issue saw left behind on web3: the VIP on lo and arp_ignore=1.
    vip = re.sub(r"\.\d+$", ".100", lab.host("web1").address)
    lo = (await lab.exec("web3", ["ip", "-4", "-o", "addr", "show", "dev", "lo"])).stdout
    assert f"{vip}/32" not in lo, lo
    assert await sysctl(lab, "web3", "net.ipv4.conf.all.arp_ignore") == "0"
    # The backups the recovery found on the hosts are listed, with where they are.
    listed = {(b["host"], b["location"]) for b in run["backups"]}
    for host in order[: order.index(point.host) + 1]:
        assert (host, f"{BACKUP_ROOT}/{plan['id']}/{PHASES[host]}") in listed, run["backups"]
        probe = await lab.exec(host, ["test", "-d", f"{BACKUP_ROOT}/{plan['id']}"], check=False)
        assert probe.returncode == 0, host
    # From the recorded state, the server plans the same join again.
    again = await cluster.pending(cluster.sha)
    assert again["id"] != plan["id"]
    assert {h: [s["id"] for s in hp["steps"]] for h, hp in again["hosts"].items()} == {
        h: [s["id"] for s in hp["steps"]] for h, hp in plan["hosts"].items()
    }
