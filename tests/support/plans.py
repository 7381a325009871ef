"""A small real plan for tests of the store and the API: one step on one host."""

from __future__ import annotations

from reconciler.plan.steps import Change, HostPlan, Phase, Plan, Step, plan_id


def make_plan(revision: str = "a" * 40, host: str = "web1", digest: str = "d1") -> Plan:
    """One `addr.present` step adding a VIP to lo on `host`, with a plan id as real ones get."""
    step = Step(
        id=f"{host}/vip/add",
        host=host,
        state_id="vip",
        function="addr.present",
        subsystem="addr",
        phase=Phase.REAL_SERVERS_PREPARE,
        description="add 10.77.0.100/32 to lo",
        change=Change(before=None, after="10.77.0.100/32 dev lo"),
        commands=(("ip", "addr", "add", "10.77.0.100/32", "dev", "lo"),),
        undo=(("ip", "addr", "del", "10.77.0.100/32", "dev", "lo"),),
    )
    hosts = {host: HostPlan(host=host, facts_digest=digest, steps=(step,))}
    return Plan(
        id=plan_id(revision, {host: digest}, hosts),
        revision=revision,
        clusters=("web",),
        hosts=hosts,
    )
