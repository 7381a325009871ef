"""The executor's batch and host policies on fake hosts: which batches run, which are rolled back
and in which order, what an unreachable host stops, and that nothing runs after a stop.

The hosts are `FakeHost`s (tests/unit/apply/fake_hosts.py) answering the real scripts' marker
protocol; tests/lab/test_executor_batches.py runs the same decisions on real hosts.
"""

from __future__ import annotations

from reconciler.apply.executor import apply_plan
from reconciler.plan.steps import Phase
from tests.unit.apply.fake_hosts import (
    ARP_IGNORE,
    FakeHost,
    desired_for,
    fake_transport,
    join_steps,
    make_plan,
    phase_calls,
    sysctl_step,
)

SERVERS = ("web1", "web2", "web3")
PREPARE = "20-real_servers_prepare"


def _servers(**web3: object) -> list[FakeHost]:
    return [FakeHost("web1"), FakeHost("web2"), FakeHost("web3", **web3)]  # type: ignore[arg-type]


async def test_failed_last_batch_rolls_back_the_finished_batches_newest_first() -> None:
    hosts = _servers(fail_step=(1, 1))
    t = fake_transport(*hosts)
    plan = make_plan({h.name: join_steps(h.name) for h in hosts})
    result = await apply_plan(plan, desired_for(SERVERS, batch_size=1), t)
    assert not result.ok
    assert phase_calls(t) == [(h, PREPARE) for h in SERVERS]  # one batch at a time, in order
    # The failed host's own rollback first, then the finished batches, newest first.
    assert [(r.host, r.by, r.proven) for r in result.rollbacks] == [
        ("web3", "phase", True),
        ("web2", "controller", True),
        ("web1", "controller", True),
    ]
    assert [p.batch for p in result.phases] == [0, 1, 2]
    assert all(s.rolled_back for h in ("web1", "web2") for s in result.hosts[h])
    assert all(h.sysctls[ARP_IGNORE] == "0" for h in hosts)


async def test_keep_policy_leaves_the_finished_batches_applied() -> None:
    hosts = _servers(fail_step=(0, 2))
    t = fake_transport(*hosts)
    plan = make_plan({h.name: join_steps(h.name) for h in hosts})
    result = await apply_plan(plan, desired_for(SERVERS, batch_size=2, finished_batches="keep"), t)
    assert not result.ok
    assert [(r.host, r.by) for r in result.rollbacks] == [("web3", "phase")]
    for h in hosts[:2]:
        assert ("rollback", f"/var/lib/shoal/backups/pfake1/{PREPARE}") not in h.asked
        assert h.sysctls[ARP_IGNORE] == "1"
        assert all(s.result and not s.rolled_back for s in result.hosts[h.name])
    assert hosts[2].sysctls[ARP_IGNORE] == "0"
    assert result.errors[0].step_id == "web3/fake-0/" + ARP_IGNORE


async def test_the_hosts_that_succeeded_in_a_failed_batch_are_rolled_back_even_with_keep() -> None:
    web1, web2, web3 = _servers()
    web2.fail_step = (1, 1)
    t = fake_transport(web1, web2, web3)
    plan = make_plan({h: join_steps(h) for h in SERVERS})
    result = await apply_plan(plan, desired_for(SERVERS, batch_size=2, finished_batches="keep"), t)
    # web1 shared web2's batch: it is undone; web3's batch never started.
    assert [(r.host, r.by, r.proven) for r in result.rollbacks] == [
        ("web2", "phase", True),
        ("web1", "controller", True),
    ]
    assert web1.sysctls[ARP_IGNORE] == "0"
    assert phase_calls(t) == [("web1", PREPARE), ("web2", PREPARE)]
    assert {s.comment for s in result.hosts["web3"]} == {"not run: the rollout stopped"}


async def test_a_failed_director_phase_keeps_the_phases_before_it_and_stops_the_rest() -> None:
    """Phases run in order; a failure rolls back its own phase only, later phases never run."""
    web1, lvs1, lvs2 = FakeHost("web1"), FakeHost("lvs1", fail_step=(0, 1)), FakeHost("lvs2")
    t = fake_transport(web1, lvs1, lvs2)
    steps = {
        "web1": (
            *join_steps("web1"),
            sysctl_step("web1", 9, "net.ipv4.conf.lo.arp_ignore", "1",
                        phase=Phase.REAL_SERVERS_CLEANUP),
        ),
        "lvs1": join_steps("lvs1", Phase.DIRECTOR_PRIMARY),
        "lvs2": join_steps("lvs2", Phase.DIRECTOR_BACKUP),
    }  # fmt: skip
    result = await apply_plan(make_plan(steps), desired_for(list(steps)), t)
    assert not result.ok
    assert phase_calls(t) == [
        ("web1", PREPARE),
        ("lvs2", "30-director_backup"),
        ("lvs1", "40-director_primary"),
    ]
    assert [(r.host, r.phase, r.by) for r in result.rollbacks] == [
        ("lvs1", "director_primary", "phase")
    ]
    assert web1.sysctls[ARP_IGNORE] == "1" and lvs2.sysctls[ARP_IGNORE] == "1"
    cleanup = [s for s in result.hosts["web1"] if s.phase == "real_servers_cleanup"]
    assert [(s.result, s.comment) for s in cleanup] == [(None, "not run: the rollout stopped")]
    assert "net.ipv4.conf.lo.arp_ignore" not in web1.sysctls  # nothing ran in the later phase


async def test_unreachable_host_with_stop_policy_runs_nothing_anywhere() -> None:
    hosts = _servers()
    t = fake_transport(*hosts, unreachable=["web3"])
    plan = make_plan({h.name: join_steps(h.name) for h in hosts})
    result = await apply_plan(plan, desired_for(SERVERS, unreachable_hosts="stop"), t)
    assert not result.ok
    assert phase_calls(t) == []
    assert result.unreachable == ["web3"]
    assert [e.kind for e in result.errors] == ["HostUnreachable"]
    assert {s.comment for s in result.steps()} == {
        "not run: a host is unreachable or blocked and the policy is stop"
    }
    assert "unreachable_hosts = stop, so nothing ran" in result.comment


async def test_unreachable_host_with_continue_policy_applies_the_others_and_fails_the_run() -> None:
    hosts = _servers()
    t = fake_transport(*hosts, unreachable=["web3"])
    plan = make_plan({h.name: join_steps(h.name) for h in hosts})
    result = await apply_plan(plan, desired_for(SERVERS, unreachable_hosts="continue"), t)
    assert phase_calls(t) == [("web1", PREPARE), ("web2", PREPARE)]
    assert all(s.result for h in ("web1", "web2") for s in result.hosts[h])
    assert {s.comment for s in result.hosts["web3"]} == {"not run: host unreachable"}
    assert result.rollbacks == []
    assert not result.ok and result.unreachable == ["web3"]
