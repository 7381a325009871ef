"""The verification that ends a run, and the rollback of every applied phase when it fails.

When every phase applied and `settings.verify` names clients, `reconciler.verify.run.
verify_desired` checks the plan's clusters (real requests through each VIP, ARP from the
clients). A failure fails the run like a failed step: every host phase that changed is rolled
back, latest phase and batch first (so the directors stop sending to a real server before it is
undone), each rollback proven, and the run's errors name the check and the host at fault.
"""

from __future__ import annotations

import asyncio

from reconciler.apply.events import ApplyEvent
from reconciler.apply.rollback import rollback_finished
from reconciler.apply.run_state import RunState
from reconciler.apply.runresult import RunError
from reconciler.verify.run import verify_desired

# Which verification failure a run names first: the likeliest cause of the others.
_CHECK_ORDER = ("setup", "director", "arp", "nd", "neighbour", "probe", "traffic")


async def verify_applied(run: RunState) -> None:
    """The verification phase; on failure, roll back every host phase that applied."""
    cfg = run.desired.settings.verify
    clusters = [c for c in run.plan.clusters if c in run.desired.clusters]
    if not cfg.enabled or not cfg.clients or not clusters:
        return
    run.emit(ApplyEvent("verify", message=f"verifying {', '.join(clusters)} from "
                         f"{', '.join(cfg.clients)}"))  # fmt: skip
    verification = await verify_desired(
        run.desired, run.transport, run.facts, clusters=clusters
    )
    run.result.verification = verification
    if verification.ok:
        run.emit(ApplyEvent("verify", message="verification passed", ok=True))
        return
    for failure in verification.failures:
        run.result.errors.append(
            RunError(
                kind="VerificationError",
                host=failure.host or "-",
                phase="verify",
                step_id=f"verify/{failure.check}",
                message=f"{failure.check} check failed: {failure.message}",
            )
        )
    # A host answering ARP for a VIP explains misrouted traffic, not the other way round.
    first = min(verification.failures, key=lambda f: _CHECK_ORDER.index(f.check))
    why = f"verification failed ({first.check} check"
    why += f", host {first.host}): " if first.host else "): "
    why += "; ".join([first.message, *(f.message for f in verification.failures
                                       if f is not first)])  # fmt: skip
    run.emit(ApplyEvent("verify", host=first.host, message=why, ok=False))
    # Latest phase and batch first: the reverse of the order they were applied in.
    for outs in reversed(run.applied):
        await asyncio.gather(*(rollback_finished(run, o, why) for o in outs))
    run.result.ok = False
    rolled = ", ".join(f"{rb.host} ({rb.phase})" for rb in run.result.rollbacks)
    run.result.comment = why + (f"; rolled back: {rolled}" if rolled else "")
