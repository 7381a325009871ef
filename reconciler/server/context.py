"""What every part of the controller shares, and the two reads they all make.

The watch loop, approvals, runs and crash recovery each take a `ServerContext`: the store, the
git source, the transport factory, the clock and the cluster locks, plus `load` (a revision's
validated desired state, cached) and `gather` (hosts' facts, kept in the store for
GET /hosts/{name}/facts). Nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.errors import DesiredStateInvalid
from reconciler.facts.gather import gather_facts
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.compile import managed_paths
from reconciler.plan.reuse import PlanReuse
from reconciler.server.clock import Clock, stamp
from reconciler.server.locks import ClusterLocks
from reconciler.server.metrics import ServerMetrics
from reconciler.server.notify import Notifier
from reconciler.server.notify_events import notification
from reconciler.server.ownership import Ownership, SoleOwnership
from reconciler.server.source import Source
from reconciler.server.store.database import Store
from reconciler.server.store.owners import Fence
from reconciler.server.store.records import PlanRecord
from reconciler.transport.protocol import Transport, TransportFactory

ACTOR = "controller"
# Loaded revisions kept (valid or not): the head, and the few an open plan or a run refers to.
REVISIONS_CACHED = 16


# At most this many units keep their last host plans (each holds one plan's worth).
_UNITS_REUSED = 64


@dataclass
class ServerContext:
    source: Source
    store: Store
    transports: TransportFactory
    clock: Clock
    # Ask the loop for a pass soon (the controller's `wake`).
    wake: Callable[[str], None]
    # Ask the loop to look at a unit (its key) at a moment (a freeze window's end).
    look_at: Callable[[str, datetime], None] = lambda key, at: None
    locks: ClusterLocks = field(default_factory=ClusterLocks)
    # Which clusters this server plans, applies and recovers (all of them, on its own store).
    ownership: Ownership = field(default_factory=SoleOwnership)
    _desired: OrderedDict[str, Desired | DesiredStateInvalid] = field(default_factory=OrderedDict)
    # Per unit, the host plans of its last plan: a pass over unchanged hosts reuses them.
    _plan_reuse: dict[tuple[str, ...], PlanReuse] = field(default_factory=dict)
    metrics: ServerMetrics = field(init=False)
    # Where events go (the receivers file of `shoal serve`); None: nowhere.
    notifier: Notifier | None = None
    link_base: str = ""

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.store)

    def now(self) -> str:
        return stamp(self.clock.now())

    def plan_reuse(self, unit: tuple[str, ...]) -> PlanReuse:
        """The unit's PlanReuse; used only under the unit's locks."""
        if unit not in self._plan_reuse and len(self._plan_reuse) >= _UNITS_REUSED:
            self._plan_reuse.clear()  # units come and go with the clusters: forget old ones
        return self._plan_reuse.setdefault(unit, PlanReuse())

    def notify(self, event: str, record: PlanRecord, *, who: str, text: str,
               run_id: str | None = None) -> None:  # fmt: skip
        """Queue `event` for the receivers that want it; never waits (`notify`)."""
        if self.notifier is not None:
            self.notifier.emit(notification(event, record, at=self.now(), who=who, text=text,
                                            link_base=self.link_base, run_id=run_id))  # fmt: skip

    def fence(self, unit: Sequence[str]) -> Fence | None:
        """The owner epochs this server's runs of `unit` write under (None: unfenced)."""
        return self.ownership.fence(unit)

    def transport(self, desired: Desired) -> Transport:
        return self.transports(desired)

    async def load(self, sha: str) -> Desired:
        """The validated desired state at `sha`; raises DesiredStateInvalid (both cached)."""
        cached = self._desired.get(sha)
        if cached is None:
            try:
                async with self.source.checkout(sha) as tree:
                    cached = await asyncio.to_thread(load_repository, tree, sha)
            except DesiredStateInvalid as exc:
                cached = exc
            self._desired[sha] = cached
            while len(self._desired) > REVISIONS_CACHED:
                self._desired.popitem(last=False)
        self._desired.move_to_end(sha)
        if isinstance(cached, DesiredStateInvalid):
            raise cached
        return cached

    async def gather(
        self, transport: Transport, desired: Desired, hosts: Sequence[str]
    ) -> dict[str, HostFacts]:
        paths = managed_paths(desired)
        started = time.monotonic()
        facts = await gather_facts(transport, list(hosts), {h: paths.get(h, []) for h in hosts})
        self.metrics.facts_seconds.observe(time.monotonic() - started)
        for name, host_facts in facts.items():
            # Fast local writes; kept for GET /hosts/{name}/facts.
            self.store.put_host_facts(name, host_facts.digest(), host_facts.model_dump(mode="json"))
        return facts
