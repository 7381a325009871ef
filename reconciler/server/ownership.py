"""Which clusters this server owns: the one that plans, applies and recovers them.

On SQLite one server owns every cluster (`SoleOwnership`): nothing to claim, runs unfenced. On
a PostgreSQL store several servers share, `postgres_ownership.PostgresOwnership` decides, by
advisory locks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.server.store.owners import Fence


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of claiming a unit: owned (with the fence its runs write under, None when
    unfenced), or not (another server holds one of its clusters)."""

    owned: bool
    fence: Fence | None = None
    # Clusters this claim acquired just now (a takeover, or the first claim): their
    # interrupted runs are this server's to recover.
    acquired: tuple[str, ...] = ()


class Ownership(ABC):
    name: str
    # Seconds between looks for clusters whose owner is gone (None: nobody else can own any).
    watch_interval: float | None = None

    @abstractmethod
    async def claim(self, unit: Sequence[str]) -> Claim:
        """Own every cluster of `unit`, or none of those not already owned."""

    @abstractmethod
    def fence(self, unit: Sequence[str]) -> Fence | None:
        """The fence of clusters already owned (no database round trip)."""

    def holds(self, unit: Sequence[str]) -> bool:
        """Whether this server still holds every cluster of `unit` now (a round trip on the
        lock session, where there is one): asked before each phase of an apply."""
        return True

    def close(self) -> None:
        return None


class SoleOwnership(Ownership):
    """One server, every cluster: runs are unfenced."""

    name = "sole"

    async def claim(self, unit: Sequence[str]) -> Claim:
        return Claim(owned=True)

    def fence(self, unit: Sequence[str]) -> Fence | None:
        return None
