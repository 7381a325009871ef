"""Crash recovery on fake hosts: which phases are recovered in which order, and what each host
is recorded as afterwards (restored, untouched, unknown), decided by the facts read after.

The hosts are `FakeHost`s left as a controller that crashed would leave them
(`crashed_in`); tests/lab/test_serve_crash_recovery.py does the same on real hosts.
"""

from __future__ import annotations

from reconciler.apply.recovery import backups, host_verdicts, restore_snapshots
from reconciler.facts.gather import gather_facts
from reconciler.facts.parse import parse_facts_output
from reconciler.plan.steps import HostPlan, Phase, Plan
from tests.unit.apply.fake_hosts import (
    ARP_IGNORE,
    FakeHost,
    crashed_in,
    fake_transport,
    join_steps,
)


def _plan(hosts: list[FakeHost], phases: dict[str, Phase]) -> Plan:
    """The plan as it was made: each host's steps, and the digest of its facts then."""
    return Plan(
        id="pcrash1",
        revision="r1",
        clusters=(),
        hosts={
            h.name: HostPlan(
                host=h.name,
                facts_digest=parse_facts_output(h.name, h.facts_output()).digest(),
                steps=join_steps(h.name, phases[h.name]),
            )
            for h in hosts
        },
    )


async def test_recovery_restores_latest_phase_first_and_facts_decide_each_host() -> None:
    web1 = FakeHost("web1")  # its phase ran and was confirmed before the crash
    web2 = FakeHost("web2")  # its phase never started
    web3 = FakeHost("web3")  # unreachable now
    lvs1 = FakeHost("lvs1")  # the primary's phase ran, never confirmed
    hosts = [web1, web2, web3, lvs1]
    prepare = Phase.REAL_SERVERS_PREPARE
    plan = _plan(
        hosts, {"web1": prepare, "web2": prepare, "web3": prepare, "lvs1": Phase.DIRECTOR_PRIMARY}
    )
    crashed_in(web1, plan, Phase.REAL_SERVERS_PREPARE, confirmed=True)
    crashed_in(lvs1, plan, Phase.DIRECTOR_PRIMARY, confirmed=False)
    assert web1.sysctls[ARP_IGNORE] == "1" and lvs1.sysctls[ARP_IGNORE] == "1"
    t = fake_transport(*hosts, unreachable=["web3"])

    phases = await restore_snapshots(plan, t)

    # The director's phase (40) first, then the real servers' (20), those hosts together.
    assert [(p.host, int(p.phase)) for p in phases] == [
        ("lvs1", 40), ("web1", 20), ("web2", 20), ("web3", 20),
    ]  # fmt: skip
    found = {p.host: (p.found, p.restored_by, p.error) for p in phases}
    assert found["lvs1"] == ("finished", "recover", None)
    assert found["web1"] == ("confirmed", "recover", None)
    assert found["web2"] == ("not_started", None, None)
    assert found["web3"][0] == "unknown" and "could not run" in str(found["web3"][2])
    assert web1.sysctls[ARP_IGNORE] == "0" and lvs1.sysctls[ARP_IGNORE] == "0"

    after = await gather_facts(t, sorted(plan.hosts))
    verdicts = host_verdicts(plan, phases, after, None)
    assert {h: v["state"] for h, v in verdicts.items()} == {
        "lvs1": "restored",
        "web1": "restored",
        "web2": "untouched",
        "web3": "unknown",
    }
    assert verdicts["web3"]["reason"].startswith("unreachable: 20-real_servers_prepare: ")
    assert [p.host for p in backups(phases)] == ["lvs1", "web1"]


async def test_a_restore_that_leaves_a_change_is_unknown_not_restored() -> None:
    web1 = FakeHost("web1", restore_leaves=frozenset({ARP_IGNORE}))
    plan = _plan([web1], {"web1": Phase.REAL_SERVERS_PREPARE})
    crashed_in(web1, plan, Phase.REAL_SERVERS_PREPARE, confirmed=False)
    t = fake_transport(web1)
    phases = await restore_snapshots(plan, t)
    assert [(p.found, p.error) for p in phases] == [("finished", None)]
    verdict = host_verdicts(plan, phases, await gather_facts(t, ["web1"]), None)["web1"]
    assert verdict["state"] == "unknown"
    assert verdict["reason"].startswith("its facts differ from the pre-apply facts")
    assert any(d.startswith("20-real_servers_prepare snapshot: sysctl differs")
               for d in verdict["differences"])  # fmt: skip
