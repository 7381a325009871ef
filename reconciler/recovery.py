"""Restoring the hosts of a run that a crash left `applying`, from their on-host snapshots.

The executor leaves, per host and phase, a backup directory with the snapshot and a restore
script (`reconciler.hostscript`). After a restart the controller cannot know how far the run
got, so every phase of every host of the plan is asked, latest phase first, to recover: a phase
that never started there has no directory (nothing to do); one that is still running is
stopped; one that finished is rolled back, because nobody saw its result. The proof (facts
against the plan's pre-apply digests) is the controller's, which gathers them afterwards.
"""

from __future__ import annotations

import logging
from typing import Any

from reconciler import hostscript as hs
from reconciler.errors import ShoalError
from reconciler.executor import ScriptTransport
from reconciler.steps import Phase, Plan

log = logging.getLogger("shoal.recovery")

RECOVER_TIMEOUT = 900.0  # the script may wait for a lock-out timer's own restore (<= 600 s)
_MISSING = "@@shoal-missing"


async def restore_snapshots(plan: Plan, transport: ScriptTransport) -> dict[str, Any]:
    """Run the recover script for every (host, phase) of `plan`, phases in reverse order.

    Returns per host the phases restored, the ones that had not started, and errors.
    """
    report: dict[str, Any] = {}
    for host, host_plan in sorted(plan.hosts.items()):
        phases = sorted({step.phase for step in host_plan.steps}, reverse=True)
        entry: dict[str, list[str]] = {"restored": [], "not_started": [], "errors": []}
        for phase in phases:
            name = Phase(phase).name.lower()
            script = hs.build_recover_script(plan.id, Phase(phase))
            try:
                result = await transport.run_script_fresh(host, script, timeout=RECOVER_TIMEOUT)
            except ShoalError as exc:
                entry["errors"].append(f"{name}: {exc}")
                log.error("recover failed", extra={"host": host, "phase": name, "error": str(exc)})
                continue
            if _MISSING in str(result.stdout):
                entry["not_started"].append(name)
            elif int(result.exit_status) == 0:
                entry["restored"].append(name)
            else:
                entry["errors"].append(f"{name}: recover script exited {result.exit_status}")
        report[host] = entry
    return report
