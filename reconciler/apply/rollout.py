"""One phase's rollout in batches, and what a failed batch undoes (the batch failure policy).

Real-server phases change `settings.apply.batch_size` hosts at a time; every other phase runs
its hosts together as one batch. A failure stops the rollout: each failed host's own rollback
is proven, the hosts of its batch that succeeded are rolled back, and the finished batches of a
real-server phase are rolled back newest first or kept, as `settings.apply.finished_batches`
says. The batches after it do not run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from reconciler.apply.events import ApplyEvent, phase_name
from reconciler.apply.host_run import host_phase, run_host
from reconciler.apply.rollback import rollback_finished, settle_failed
from reconciler.apply.run_state import HostOutcome, RunState
from reconciler.plan.steps import Phase, Step

REAL_SERVER_PHASES = frozenset({Phase.REAL_SERVERS_PREPARE, Phase.REAL_SERVERS_CLEANUP})


def batches(phase: Phase, hosts: Sequence[str], batch_size: int) -> list[list[str]]:
    """Real servers change `batch_size` at a time; every other phase is one batch."""
    ordered = list(hosts)
    if phase not in REAL_SERVER_PHASES:
        return [ordered] if ordered else []
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


async def run_phase(run: RunState, phase: Phase, per_host: dict[str, tuple[Step, ...]]) -> bool:
    finished: list[list[HostOutcome]] = []
    groups = batches(phase, sorted(per_host), run.settings.batch_size)
    for b, hosts in enumerate(groups):
        stale = [h for h in hosts if h in run.dirty]
        if stale:
            run.facts.update(await run.gather(stale))
        outs = [
            HostOutcome(
                hp=host_phase(run, h, phase, per_host[h]), batch=b, pre_facts=run.facts[h]
            )
            for h in hosts
        ]
        outs = list(await asyncio.gather(*(run_host(run, o) for o in outs)))
        failed = [o for o in outs if not o.ok]
        for o in outs:
            run.record(o)
        if not failed:
            for o in outs:
                run.dirty.add(o.hp.host)
                run.emit(ApplyEvent("host-done", phase_name(phase), o.hp.host, "ok", True))
            finished.append(outs)
            run.applied.append(outs)
            continue
        for o in failed:
            if o.error is not None:
                run.result.errors.append(o.error)
            run.result.interrupted = run.result.interrupted or o.interrupted
            await settle_failed(run, o)
            run.emit(ApplyEvent("host-done", phase_name(phase), o.hp.host, "failed", False))
        reason = f"batch {b + 1} of {phase_name(phase)} failed on " + ", ".join(
            o.hp.host for o in failed
        )
        await asyncio.gather(*(rollback_finished(run, o, reason) for o in outs if o.ok))
        if phase in REAL_SERVER_PHASES and run.settings.finished_batches == "rollback":
            for done in reversed(finished):
                await asyncio.gather(*(rollback_finished(run, o, reason) for o in done))
        else:
            for done in finished:
                for o in done:
                    run.dirty.add(o.hp.host)
        for later in groups[b + 1 :]:
            for h in later:
                run.add_not_run(h, phase, per_host[h], "not run: the rollout stopped")
        return False
    return True
