"""Helpers the plan tests share (support, not tests): facts as the gathering would return them."""

from __future__ import annotations

from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.compile import managed_paths
from tests.statecases import HOSTS, fresh_facts, gathered


def facts_for(desired: Desired, **overrides: HostFacts) -> dict[str, HostFacts]:
    """Fresh facts of every test host (or the override), with the files the plan compares."""
    paths = managed_paths(desired)
    out = {h: gathered(fresh_facts(h), paths.get(h, [])) for h in HOSTS}
    for host, f in overrides.items():
        out[host] = gathered(f, paths.get(host, []))
    return out
