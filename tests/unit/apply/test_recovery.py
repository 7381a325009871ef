"""What a crash recovery records per host, from the facts gathered after the restores (pure).

The recover scripts themselves run against real hosts in tests/lab/test_serve_crash_recovery.py.
"""

from __future__ import annotations

from reconciler.apply.phaselog import parse_log
from reconciler.apply.recovery import PhaseRecovery, _found, backups, host_verdicts
from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.compile import managed_paths
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import Phase
from tests.statecases import HOSTS, cluster_desired, fresh_facts, gathered, set_sysctls

N = "0123456789abcdef"


def _facts(desired: Desired, **overrides: HostFacts) -> dict[str, HostFacts]:
    paths = managed_paths(desired)
    out = {h: gathered(fresh_facts(h), paths.get(h, [])) for h in HOSTS}
    out.update({h: gathered(f, paths.get(h, [])) for h, f in overrides.items()})
    return out


def _recovered(host: str, text: str) -> PhaseRecovery:
    log = parse_log(f"@@shoal-run {N}\n{text}")
    found, by = _found(log)
    return PhaseRecovery(host, Phase.REAL_SERVERS_PREPARE, "/b", found, by, None, log)


CONFIRMED = (
    f"@@shoal {N} recover-confirmed\n@@shoal {N} rollback-begin recover\n"
    f"@@shoal {N} rollback-end\n@@shoal {N} phase-begin 1\n@@shoal {N} phase-end ok\n"
)


def test_a_confirmed_phase_is_found_confirmed_and_restored_by_the_recovery() -> None:
    p = _recovered("web1", CONFIRMED)
    assert (p.found, p.restored_by, p.log.rolled_back) == ("confirmed", "recover", True)
    timer = _recovered(
        "web1",
        f"@@shoal {N} restore-by timer\n@@shoal {N} phase-begin 1\n"
        f"@@shoal {N} rollback-begin timer\n@@shoal {N} rollback-end\n",
    )
    assert (timer.found, timer.restored_by) == ("restored", "timer")
    earlier = _recovered(
        "web1", f"@@shoal {N} restore-by recover\n@@shoal {N} restore-done\n"
    )
    assert (earlier.found, earlier.restored_by) == ("restored", "recover")
    running = _recovered(
        "web1", f"@@shoal {N} aborted-phase\n@@shoal {N} rollback-begin recover\n"
    )
    assert running.found == "running" and not running.log.rolled_back


def test_facts_decide_restored_untouched_or_unknown() -> None:
    desired = cluster_desired("sysctl")
    before = _facts(desired)
    plan = plan_desired(desired, before)
    assert plan.hosts["web1"].steps
    phases = [_recovered("web1", CONFIRMED)]

    same = host_verdicts(plan, phases, before, plan_desired(desired, before))
    assert same["web1"]["state"] == "restored" and same["web1"]["differences"] == []
    assert {same[h]["state"] for h in plan.hosts if h != "web1"} == {"untouched"}

    # The restore "succeeded" but the host kept the new arp_ignore: never `restored`.
    kept = set_sysctls(fresh_facts("web1"), {"net.ipv4.conf.all.arp_ignore": "1"})
    after = _facts(desired, web1=kept)
    verdict = host_verdicts(plan, phases, after, plan_desired(desired, after))["web1"]
    assert verdict["state"] == "unknown"
    assert verdict["reason"].startswith("its facts differ from the pre-apply facts")
    assert any(
        d.startswith("still in effect: web1/sysctl-net.ipv4.conf.all.arp_ignore")
        for d in verdict["differences"]
    ), verdict

    gone = {**before, "web1": HostFacts.all_unknown("web1", "connection refused")}
    lost = host_verdicts(plan, phases, gone, None)["web1"]
    assert lost["state"] == "unknown" and "connection refused" in lost["reason"]


def test_an_unreachable_host_is_unknown_and_lists_no_backup() -> None:
    desired = cluster_desired("sysctl")
    before = _facts(desired)
    plan = plan_desired(desired, before)
    p = PhaseRecovery("web1", Phase.REAL_SERVERS_PREPARE, "/b", "unknown", None, "no route")
    verdict = host_verdicts(plan, [p], before, plan_desired(desired, before))["web1"]
    assert verdict["state"] == "unknown" and verdict["reason"] == "unreachable: " + (
        "20-real_servers_prepare: no route"
    )
    assert backups([p]) == []
    assert backups([_recovered("web1", CONFIRMED)])[0].backup == "/b"
