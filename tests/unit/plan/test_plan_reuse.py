"""A host plan handed back by `PlanReuse` is byte for byte the plan made afresh from the same
inputs, and a host whose facts, low states or desired state changed is planned again.

Every golden scenario is planned twice with one PlanReuse, the second time from inputs built
anew (equal values, new objects, as the controller's next pass gathers them); the first plan,
with nothing to reuse yet, is the fresh one it must equal byte for byte.
"""

from __future__ import annotations

import pytest

from bench.synthetic import synthetic_facts, synthetic_repo
from reconciler.desired.loader import load_tree
from reconciler.facts.hostfacts import Fact
from reconciler.plan.planner import plan_desired
from reconciler.plan.reuse import PlanReuse
from tests.unit.plan.test_plan_golden import scenarios


@pytest.mark.parametrize("name", sorted(scenarios()))
def test_reused_host_plans_equal_fresh_ones(name: str) -> None:
    build = scenarios()[name]
    reuse = PlanReuse()
    first = plan_desired(*build(), reuse=reuse)
    assert reuse.reused == 0
    again = plan_desired(*build(), reuse=reuse)
    planned = [h for h, hp in first.hosts.items() if hp.facts_digest]  # hosts with facts
    assert reuse.reused == len(planned)
    assert all(again.hosts[h] is first.hosts[h] for h in planned)
    # `first` is a fresh plan (nothing to reuse yet) of equal inputs.
    assert again.model_dump_json() == first.model_dump_json()
    assert again.id == first.id


def test_changed_facts_or_desired_state_plan_the_host_again() -> None:
    host, n = "rs00003", 12
    desired = load_tree(synthetic_repo(n, 3), revision="a")
    facts = synthetic_facts(n)
    reuse = PlanReuse()
    plan_desired(desired, facts, reuse=reuse)

    # One host's sysctls changed (arp_ignore already 1 on all): only it is planned again.
    sysctls = dict(facts[host].sysctls.value or {})
    sysctls["net.ipv4.conf.all.arp_ignore"] = "1"
    changed = {**facts, host: facts[host].model_copy(update={"sysctls": Fact.of(sysctls)})}
    again = plan_desired(desired, changed, reuse=reuse)
    assert reuse.reused == len(facts) - 1
    fresh = plan_desired(desired, changed)
    assert again.model_dump_json() == fresh.model_dump_json()
    assert "sysctl-net.ipv4.conf.all.arp_ignore" not in {
        s.state_id for s in again.hosts[host].steps
    }

    # A new revision with the same files: every host plan is reused, the plan id is new.
    same = load_tree(synthetic_repo(n, 3), revision="b")
    moved = plan_desired(same, changed, reuse=reuse)
    assert reuse.reused == len(facts)
    assert moved.id == plan_desired(same, changed).id != again.id

    # Another desired state (one VIP fewer): nothing is reused.
    other = load_tree(synthetic_repo(n, 2), revision="c")
    replanned = plan_desired(other, changed, reuse=reuse)
    assert reuse.reused == 0
    assert replanned.model_dump_json() == plan_desired(other, changed).model_dump_json()
