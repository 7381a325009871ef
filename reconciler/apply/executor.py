"""Applying a plan: phases in order, real servers in batches, every host backed up and provable.

`apply_plan` is the top of the apply stage. It reads the hosts with steps (or takes the facts
the caller just gathered), refuses the plan when the facts moved (`check_stale`) or a host
breaks a safety rule, applies the unreachable-hosts policy, then runs the phases in order
(DIRECTOR_BACKUP before DIRECTOR_PRIMARY, see `Phase`), each through
`reconciler.apply.rollout`, and stops at the first phase that fails: nothing runs on the later
phases. When every phase applied, `reconciler.apply.final_verify` checks the clusters.

Where the rest lives: one host's phase (`host_run`: one script over one SSH channel that
snapshots, arms the lock-out timer, runs the steps and restores itself on failure), its
confirmation over a new connection and recovery (`confirmation`), rollback and its proof
(`rollback`), the scripts themselves (`phase_script`, `followup_scripts`), progress events
(`events`) and the result (`runresult`).

Staleness is the caller's business: apply_plan applies the plan it is given (the controller
re-plans from fresh facts first, `shoal apply` plans right before applying). A caller that has
just gathered the facts on the same transport hands them over (`facts=`): each host is then
read once per apply, not once for the plan and again here.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.apply.events import ApplyEvent, EventHandler, phase_name
from reconciler.apply.final_verify import verify_applied
from reconciler.apply.rollout import run_phase
from reconciler.apply.run_state import RunState
from reconciler.apply.runresult import RunError, RunResult
from reconciler.desired.models import Desired
from reconciler.errors import StalePlan
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.steps import Plan
from reconciler.transport.protocol import Transport


async def _run(run: RunState) -> RunResult:
    plan, result = run.plan, run.result
    run.emit(ApplyEvent("start", message=f"plan {plan.id}"))
    # Hosts the plan could not read, then every host with steps, read again now.
    unreachable = {
        h: hp.unknown_reason or "unreachable"
        for h, hp in plan.hosts.items()
        if not hp.reachable
    }
    with_steps = [h for h, hp in plan.hosts.items() if hp.steps and hp.reachable]
    # The caller's facts (those the plan was made from, on this transport) save every host
    # a second facts round trip; a host they lack is read now.
    given = run.given_facts or {}
    run.facts = {h: given[h] for h in with_steps if h in given}
    run.facts.update(await run.gather([h for h in with_steps if h not in given]))
    for h in with_steps:
        if not run.facts[h].hostname.known:
            unreachable[h] = run.facts[h].hostname.unknown_reason or "unreachable"
    if run.check_stale:
        changed = [
            h
            for h in with_steps
            if h not in unreachable and run.facts[h].digest() != plan.hosts[h].facts_digest
        ]
        if changed:
            raise StalePlan(plan.id, changed)
    if plan.refused:
        # A refused host breaks an LVS-DR safety rule; changing the others around it could
        # make it worse (directors sending to a real server whose own states were refused),
        # so whatever the unreachable-hosts policy, nothing runs anywhere.
        for h, rules in plan.refused.items():
            result.errors.append(
                RunError(kind="SafetyRuleBroken", host=h, message="; ".join(rules))
            )
        result.ok = False
        result.comment = (
            f"refused: {', '.join(plan.refused)} break(s) an LVS-DR safety rule, so nothing "
            "ran; fix it by hand or set `adopt` for it"
        )
        run.not_run(set(plan.hosts), "not run: a host of the plan is refused")
        return run.done()
    for h, why in sorted(unreachable.items()):
        result.unreachable.append(h)
        result.errors.append(RunError(kind="HostUnreachable", host=h, message=why))
    # A blocked host has no steps; like an unreachable one it is a host the plan could not
    # bring to the desired state, so the same policy decides whether the others go on.
    blocked = {h: hp.blocked for h, hp in plan.hosts.items() if hp.blocked and hp.reachable}
    for h, why in sorted(blocked.items()):
        result.errors.append(RunError(kind="FactsUnknown", host=h, message=why))
    if (unreachable or blocked) and run.settings.unreachable_hosts == "stop":
        result.ok = False
        what = [f"unreachable: {', '.join(sorted(unreachable))}"] if unreachable else []
        what += [f"blocked: {why}" for _, why in sorted(blocked.items())]
        result.comment = (
            f"{'; '.join(what)}; settings.apply.unreachable_hosts = stop, so nothing ran"
        )
        run.not_run(set(plan.hosts), "not run: a host is unreachable or blocked and the "
                     "policy is stop")  # fmt: skip
        return run.done()
    skip = set(unreachable) | set(blocked)
    run.not_run(skip, "not run: host unreachable")
    phases = sorted({s.phase for hp in plan.hosts.values() for s in hp.steps})
    for n, phase in enumerate(phases):
        per_host = {h: st for h, st in plan.steps_in_phase(phase).items() if h not in skip}
        if not per_host:
            continue
        run.emit(ApplyEvent("phase", phase_name(phase), message=", ".join(per_host)))
        if not await run_phase(run, phase, per_host):
            result.ok = False
            for later in phases[n + 1 :]:
                for h, st in plan.steps_in_phase(later).items():
                    if h not in skip:
                        run.add_not_run(h, later, st, "not run: the rollout stopped")
            break
    if skip:
        result.ok = False
    if result.ok and run.applied:
        await verify_applied(run)
    return run.done()


async def apply_plan(
    plan: Plan,
    desired: Desired,
    transport: Transport,
    *,
    on_event: EventHandler | None = None,
    check_stale: bool = False,
    facts: Mapping[str, HostFacts] | None = None,
) -> RunResult:
    """Apply `plan` host by host and phase by phase; never raises for a failed step.

    Inspect `RunResult.ok`, or call `RunResult.raise_for_errors()` for ApplyError /
    RollbackError. With `check_stale`, a host whose facts no longer have the plan's digest
    raises StalePlan before anything runs.

    `facts`: the hosts' facts as just gathered over `transport` (for `desired`'s managed
    paths), typically those the plan was made from. They are the pre-apply facts (and what
    `check_stale` compares), so the hosts are not read again before the first phase. Without
    them, every host with steps is read first.
    """
    return await _run(RunState(plan, desired, transport, on_event, check_stale, facts))

