"""Whether a unit's plan may start applying now: not while an admin's lock holds one of its
clusters. An approved plan then waits (state `approved`) and starts at the first pass after
the unlock; policy approvals and drift heals do not happen while locked."""

from __future__ import annotations

from reconciler.server.context import ServerContext


def apply_blocked(ctx: ServerContext, unit: tuple[str, ...]) -> str | None:
    """Why nothing of `unit` may apply now, or None."""
    locks = ctx.store.cluster_locks()
    held = [locks[c] for c in unit if c in locks]
    if not held:
        return None
    return "; ".join(
        f"cluster {lock.cluster} is locked by {lock.actor} since {lock.locked_at}: {lock.reason}"
        for lock in held
    )
