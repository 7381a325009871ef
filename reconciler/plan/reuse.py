"""Reusing a host's plan from the last plan when nothing it is made from changed (`PlanReuse`).

The controller plans every unit on every pass, level-triggered, and on most passes most hosts
are as they were. A host's plan (`planner.plan_host`, then the safety checks) is a pure function
of the desired state, the host's low states and the host's own facts: no state reads another
host's facts. So a host whose low states and facts are equal to last time's, under an equal
desired state, gets last time's HostPlan object back instead of being planned again (and the
plan id reuses the HostPlan's cached step text, `steps.host_steps_json`).

What "equal" compares, all by value:
- the desired state: a sha256 of its JSON without the revision (a commit that changes nothing a
  plan reads, say a README, keeps the host plans; the plan id still names the new revision);
- the facts: the digest (every fact but the IPVS connection counters, which no state reads),
  plus the facts the digest leaves out while they hold nothing (`_LATER_FACTS`), as JSON: a
  state may tell "not gathered" from "known, empty" apart;
- the low states: every field, the args frozen (`states.args.freeze`).
A changed desired state forgets every host. Hosts not planned in a pass are forgotten.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence

from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts, later_facts_json
from reconciler.plan.steps import HostPlan, LowState
from states.args import freeze

HostKey = tuple[Hashable, ...]


def desired_key(desired: Desired) -> str:
    text = desired.model_dump_json(exclude={"revision"})
    return hashlib.sha256(text.encode()).hexdigest()


def host_key(facts: HostFacts, lows: Sequence[LowState]) -> HostKey:
    """What a host's plan is made from, besides the desired state; equal keys, equal plans."""
    return (
        facts.digest(),
        later_facts_json(facts),
        tuple(
            (low.id, low.function, low.host, freeze(low.args), low.require, low.watch,
             low.onchanges, int(low.phase), low.origin)
            for low in lows
        ),
    )  # fmt: skip


class PlanReuse:
    """The host plans of one unit's last plan, to hand back to the next plan where they fit.

    One per unit of planning (the hosts and clusters a plan covers); not shared between
    threads. `plan_desired(..., reuse=...)` calls `begin`, then `get`/`put` per host, then
    `end`; `reused` counts the hosts of the last plan that were handed back.
    """

    def __init__(self) -> None:
        self._desired: str | None = None
        self._hosts: dict[str, tuple[HostKey, HostPlan]] = {}
        self._seen: set[str] = set()
        self.reused = 0

    def begin(self, desired: Desired) -> None:
        key = desired_key(desired)
        if key != self._desired:
            self._desired = key
            self._hosts = {}
        self._seen = set()
        self.reused = 0

    def get(self, host: str, key: HostKey) -> HostPlan | None:
        self._seen.add(host)
        entry = self._hosts.get(host)
        if entry is None or entry[0] != key:
            return None
        self.reused += 1
        return entry[1]

    def put(self, host: str, key: HostKey, plan: HostPlan) -> None:
        self._seen.add(host)
        self._hosts[host] = (key, plan)

    def end(self) -> None:
        """Forget the hosts this plan did not look at (they left the unit, or have no facts)."""
        for host in set(self._hosts) - self._seen:
            del self._hosts[host]
