"""Helpers for the rollout and failover lab tests: config repos, the real apply path, load.

`converge` is what `shoal apply` does: load the config repo, gather facts, `plan_desired`,
`apply_plan` with those facts as its pre-apply facts, and gather facts again for the plan that
must now be empty. `under_load` runs a
change while client1 sends a bounded stream of HTTP requests to a VIP from several concurrent
probe processes (`lab.httpd.run_load`, lab addresses only) and counts what came back.
`rollout_lab` is a lab of its own with the HTTP service on the real servers and an nftables
cluster (`Rollout`) whose real servers, weights and ARP method a test changes.

The executor's verification phase is off in these repos: each test checks the traffic itself,
during the change and after it, and the verification has tests of its own; it would add its
several seconds to every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lab import Lab, Topology
from lab.httpd import run_load, start_services, stop_services
from reconciler.apply.events import ApplyEvent
from reconciler.apply.executor import apply_plan
from reconciler.apply.runresult import RunResult
from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.facts.gather import gather_facts
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.compile import managed_paths
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import Plan
from reconciler.transport.ssh import SSHTransport
from tests.conftest import require_lab

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "config-repo"
PORT = 80
VIP_OCTET = 100


def settings_toml(drain_timeout: float = 30, verify: bool = False) -> str:
    return f"""\
approval = "auto"

[apply]
batch_size = 3
lockout_timeout = 30  # only waited for when a confirmation fails; a loaded CI box needs slack
drain_timeout = {drain_timeout}

[verify]
enabled = {"true" if verify else "false"}
clients = ["client1"]
"""


HTTP_CHECK = '{ type = "http", path = "/", expect = 200 }'


def cluster_toml(
    vip: str,
    weights: dict[str, int],
    arp_method: str = "sysctl",
    *,
    director: str = "nftables",
    check: str = HTTP_CHECK,
) -> str:
    """clusters/web.toml: a cluster on lvs1/lvs2 with one HTTP service on `vip`."""
    servers = "".join(
        f'\n  [[service.real_server]]\n  host = "{h}"\n  weight = {w}\n' for h, w in weights.items()
    )
    return f"""\
[cluster]
name = "web"
directors = ["lvs1", "lvs2"]
director = "{director}"
arp_method = "{arp_method}"

[[service]]
name = "http"
vip = "{vip}"
port = {PORT}
protocol = "tcp"
scheduler = "wlc"
check = {check}
{servers}"""


T = TypeVar("T")


def write_repo(
    lab: Lab,
    dest: Path,
    cluster_toml: str | None,
    settings_toml: str,
    host_keys: Mapping[str, str] | None = None,
) -> Desired:
    """A config repo for `lab` with one cluster file (`web`; None: no cluster), the given
    shoal.toml, and `host_keys` (TOML lines) added to those hosts' inventory tables."""
    lab.write_config_repo(FIXTURE, dest)
    (dest / "shoal.toml").write_text(settings_toml)
    web = dest / "clusters" / "web.toml"
    if cluster_toml is None:
        web.unlink()
    else:
        web.write_text(cluster_toml)
    inventory = (dest / "inventory.toml").read_text()
    for host, keys in sorted((host_keys or {}).items()):
        head = next(ln for ln in inventory.splitlines() if ln.startswith(f"[hosts.{host}]"))
        inventory = inventory.replace(head + "\n", f"{head}\n{keys}\n")
    (dest / "inventory.toml").write_text(inventory)
    return load_repository(dest)


def explain(result: RunResult) -> str:
    return result.model_dump_json(indent=1, exclude={"phases"})


def pending(plan: Plan) -> list[str]:
    return [s.id for hp in plan.hosts.values() for s in hp.steps]


@contextlib.asynccontextmanager
async def transport_for(lab: Lab, desired: Desired) -> AsyncIterator[SSHTransport]:
    async with SSHTransport(desired.inventory, desired.known_hosts, lab.client_key_path) as t:
        yield t


async def plan_and_facts(
    desired: Desired, transport: SSHTransport
) -> tuple[Plan, dict[str, HostFacts]]:
    """The plan and the facts it was made from, which `apply_plan(facts=)` takes as its
    pre-apply facts (as `shoal apply` and the server do) instead of reading the hosts again."""
    hosts = sorted(desired.inventory.hosts)
    facts = await gather_facts(transport, hosts, managed_paths(desired))
    return plan_desired(desired, facts), facts


async def plan_for(desired: Desired, transport: SSHTransport) -> Plan:
    return (await plan_and_facts(desired, transport))[0]


async def converge(
    lab: Lab, desired: Desired, on_event: Callable[[ApplyEvent], None] | None = None
) -> tuple[RunResult | None, Plan]:
    """Plan and apply `desired` (nothing when already in sync); the run and the plan after it."""
    async with transport_for(lab, desired) as t:
        plan, facts = await plan_and_facts(desired, t)
        if plan.empty:
            return None, plan
        result = await apply_plan(plan, desired, t, on_event=on_event, facts=facts)
        return result, await plan_for(desired, t)


@dataclass
class LoadReport:
    """What client1 saw while a change was applied."""

    requests: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    answered_by: Counter[str] = field(default_factory=Counter)
    # Requests of batches that started after the change had finished.
    after: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    seconds: float = 0.0
    syn_retransmits: int = 0
    # Per real server: connections its listener had to drop (accept queue full), a sign of a
    # starved machine rather than of the change.
    listen_drops: dict[str, int] = field(default_factory=dict)

    def add(self, result: dict[str, Any], after_change: bool) -> None:
        self.batches += 1
        self.requests += int(result["requested"])
        self.failed += int(result["failed"])
        self.errors.update({str(k): int(v) for k, v in result["errors"].items()})
        served = {str(k): int(v) for k, v in result["answered_by"].items()}
        self.answered_by.update(served)
        if after_change:
            self.after.update(served)

    def summary(self) -> str:
        return (
            f"{self.requests} requests in {self.batches} batches over {self.seconds:.1f}s, "
            f"{self.failed} failed {dict(self.errors)}, answered by {dict(self.answered_by)}, "
            f"after the change {dict(self.after)}, client SYN retransmits {self.syn_retransmits}, "
            f"listen drops {self.listen_drops}"
        )


async def tcp_ext(lab: Lab, host: str, name: str) -> int:
    """A TcpExt counter of the host's network namespace (/proc/net/netstat is per namespace)."""
    text = str((await lab.exec(host, ["cat", "/proc/net/netstat"])).stdout)
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("TcpExt:")]
    names, values = lines[0], lines[1]
    return int(dict(zip(names, values, strict=True)).get(name, "0"))


async def syn_retransmits(lab: Lab, host: str) -> int:
    """SYNs the host had to send again (no SYN-ACK within the retransmission timeout)."""
    return await tcp_ext(lab, host, "TCPSynRetrans")


async def _listen_drops(lab: Lab) -> dict[str, int]:
    servers = [n for n, h in lab.hosts.items() if h.role == "real_server"]
    counts = await asyncio.gather(*(tcp_ext(lab, h, "ListenDrops") for h in servers))
    return dict(zip(servers, counts, strict=True))


async def under_load(
    lab: Lab,
    vip: str,
    change: Callable[[], Awaitable[T]],
    *,
    client: str = "client1",
    port: int = 80,
    workers: int = 4,
    batch: int = 20,
    batches_after: int = 2,
    deadline: float = 600.0,
    timeout: float = 10.0,
) -> tuple[T, LoadReport]:
    """Run `change()` while `workers` probe processes on `client` send requests to vip:port.

    Driven by the change, not by a count: each worker sends batches of `batch` requests (each
    request its own connection, `timeout` seconds at most) for as long as the change runs, then
    `batches_after` more that start after it finished, so what is measured after the change does
    not depend on how fast this machine is. At least one batch of every worker is on the wire
    before the change starts. The whole run has `deadline` seconds: a change still running then
    fails the test (TimeoutError, with what the load saw so far).
    """
    report = LoadReport()
    done = asyncio.Event()
    first = [asyncio.Event() for _ in range(workers)]
    batch_deadline = batch * timeout

    async def worker(i: int) -> None:
        sent_after = 0
        n = 0
        while sent_after < batches_after:
            after = done.is_set()
            probe = run_load(
                lab, client, vip, port, count=batch, timeout=timeout, deadline=batch_deadline
            )
            task = asyncio.ensure_future(probe)
            if n == 0:
                # The probe process needs a moment to start: give it its first request's time.
                await asyncio.sleep(0.3)
                first[i].set()
            report.add(await task, after)
            sent_after += after
            n += 1
            await asyncio.sleep(0.1)  # a steady stream, not a flood

    retrans_before = await syn_retransmits(lab, client)
    drops_before = await _listen_drops(lab)
    start = time.monotonic()
    tasks = [asyncio.ensure_future(worker(i)) for i in range(workers)]
    try:
        async with asyncio.timeout(deadline):
            await asyncio.gather(*(e.wait() for e in first))
            outcome = await change()
            done.set()
            await asyncio.gather(*tasks)
    except TimeoutError as e:
        report.seconds = time.monotonic() - start
        state = "the load after it" if done.is_set() else "the change"
        raise TimeoutError(f"{state} ran past {deadline:.0f} s: {report.summary()}") from e
    finally:
        done.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    report.seconds = time.monotonic() - start
    report.syn_retransmits = await syn_retransmits(lab, client) - retrans_before
    drops = await _listen_drops(lab)
    report.listen_drops = {h: n - drops_before[h] for h, n in drops.items() if n > drops_before[h]}
    return outcome, report


@dataclass
class Rollout:
    """An nftables cluster on a lab of its own, changed through the real apply path."""

    lab: Lab
    vip: str
    workdir: Path
    drain_timeout: float

    def desired(self, weights: dict[str, int], arp_method: str = "sysctl") -> Desired:
        dest = self.workdir / f"repo-{secrets.token_hex(4)}"
        return write_repo(
            self.lab,
            dest,
            cluster_toml(self.vip, weights, arp_method),
            settings_toml(self.drain_timeout),
        )

    async def ensure(self, weights: dict[str, int], arp_method: str = "sysctl") -> None:
        """The precondition of a test, applied without load (nothing if already in sync)."""
        result, after = await converge(self.lab, self.desired(weights, arp_method))
        assert result is None or result.ok, explain(result)
        assert after.empty, pending(after)

    async def change(
        self,
        weights: dict[str, int],
        arp_method: str = "sysctl",
        on_event: Callable[[ApplyEvent], None] | None = None,
    ) -> tuple[RunResult, LoadReport]:
        """Apply a change under load; it must apply and leave nothing to do."""
        desired = self.desired(weights, arp_method)
        outcome, load = await under_load(
            self.lab, self.vip, lambda: converge(self.lab, desired, on_event)
        )
        result, after = outcome
        assert result is not None, "the change planned nothing"
        assert result.ok, explain(result)
        assert after.empty, pending(after)
        print(f"\n{load.summary()}")
        return result, load


def assert_lossless(load: LoadReport, hosts: set[str]) -> None:
    """No request failed, enough were sent, and exactly `hosts` answered them."""
    assert load.failed == 0, load.summary()
    assert load.requests >= 100, load.summary()
    assert set(load.answered_by) == hosts, load.summary()


@contextlib.asynccontextmanager
async def rollout_lab(
    tmp_path_factory: pytest.TempPathFactory, *, drain_timeout: float = 30
) -> AsyncIterator[Rollout]:
    """A lab of its own (random id, removed afterwards), the HTTP service on its real servers."""
    require_lab()
    async with Lab.up(f"r{secrets.token_hex(3)}", Topology.default()) as lab:
        vip = str(ipaddress.IPv4Network(lab.subnet)[VIP_OCTET])
        await start_services(lab, [PORT])
        try:
            yield Rollout(lab, vip, tmp_path_factory.mktemp("rollout"), drain_timeout)
        finally:
            await stop_services(lab)
