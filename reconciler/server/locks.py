"""One reconciliation per cluster at a time: the controller's asyncio locks, one per cluster.

Every pass, approval and recovery holds the locks of its unit's clusters, taken in name order so
that two units cannot deadlock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager


class ClusterLocks:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, cluster: str) -> asyncio.Lock:
        return self._locks.setdefault(cluster, asyncio.Lock())

    async def acquire(self, unit: Sequence[str]) -> list[asyncio.Lock]:
        """Every cluster's lock, in name order; all or none (also when cancelled)."""
        taken: list[asyncio.Lock] = []
        try:
            for name in sorted(unit):
                lock = self._lock(name)
                await lock.acquire()
                taken.append(lock)
        except BaseException:
            for lock in reversed(taken):
                lock.release()
            raise
        return taken

    @staticmethod
    def release(locks: Sequence[asyncio.Lock]) -> None:
        for lock in reversed(locks):
            lock.release()

    @asynccontextmanager
    async def held(self, unit: Sequence[str]) -> AsyncIterator[None]:
        locks = await self.acquire(unit)
        try:
            yield
        finally:
            self.release(locks)
