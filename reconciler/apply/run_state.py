"""What one apply knows while it runs, shared by the modules that run it.

`RunState` holds the plan, its settings, the transport, the hosts' facts as last read, which
hosts changed since (`dirty`: read again before their next phase), every batch that applied
(what a failed verification rolls back), and the `RunResult` being filled in. `HostOutcome` is
one phase on one host as it went: its log, results, error and rollback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from reconciler.apply.events import ApplyEvent, EventHandler, phase_name
from reconciler.apply.host_phase import HostPhase
from reconciler.apply.phaselog import PhaseLog
from reconciler.apply.runresult import (
    HostPhaseRun,
    RollbackReport,
    RunError,
    RunResult,
    StepResult,
)
from reconciler.desired.models import ApplySettings, Desired
from reconciler.facts.gather import gather_facts
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.compile import managed_paths
from reconciler.plan.steps import Phase, Plan, Step
from reconciler.transport.protocol import Transport


@dataclass
class HostOutcome:
    """One phase on one host: what its scripts printed and what the run makes of it."""

    hp: HostPhase
    batch: int
    pre_facts: HostFacts
    log: PhaseLog = field(default_factory=PhaseLog)
    ok: bool = False
    record: HostPhaseRun | None = None
    results: list[StepResult] = field(default_factory=list)
    # Set when the host could not be reached to settle a failure (proof pending).
    rollback: RollbackReport | None = None
    error: RunError | None = None
    interrupted: bool = False


class RunState:
    def __init__(
        self,
        plan: Plan,
        desired: Desired,
        transport: Transport,
        on_event: EventHandler | None,
        check_stale: bool,
        facts: Mapping[str, HostFacts] | None = None,
    ) -> None:
        self.check_stale = check_stale
        self.given_facts = facts
        self.plan = plan
        self.desired = desired
        self.settings: ApplySettings = desired.settings.apply
        self.transport = transport
        self.on_event = on_event
        # The planner's own file list, so digests compare with the plan's (files a step writes
        # outside it are still covered by the raw snapshot).
        self.paths = managed_paths(desired)
        self.facts: dict[str, HostFacts] = {}
        self.dirty: set[str] = set()
        # Every batch that applied, in order: what a failed verification rolls back.
        self.applied: list[list[HostOutcome]] = []
        self.result = RunResult(
            plan_id=plan.id, revision=plan.revision, ok=True, started_at=datetime.now(UTC)
        )

    def emit(self, event: ApplyEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    async def gather(self, hosts: list[str]) -> dict[str, HostFacts]:
        if not hosts:
            return {}
        paths = {h: self.paths.get(h, []) for h in hosts}
        return await gather_facts(self.transport, hosts, paths)

    def record(self, out: HostOutcome) -> None:
        self.result.hosts.setdefault(out.hp.host, []).extend(out.results)
        if out.record is not None:
            self.result.phases.append(out.record)

    def add_not_run(self, host: str, phase: Phase, steps: Sequence[Step], why: str) -> None:
        self.result.hosts.setdefault(host, []).extend(
            StepResult(
                id=s.id,
                name=s.description or s.state_id,
                host=host,
                phase=phase_name(phase),
                function=s.function,
                result=None,
                comment=why,
            )
            for s in steps
        )

    def not_run(self, hosts: set[str], why: str) -> None:
        for h in sorted(hosts):
            hp = self.plan.hosts.get(h)
            if hp is None:
                continue
            for phase in sorted({s.phase for s in hp.steps}):
                self.add_not_run(h, phase, [s for s in hp.steps if s.phase == phase], why)

    def done(self) -> RunResult:
        r = self.result
        if r.errors:
            r.ok = False
        if not r.comment:
            if r.ok:
                r.comment = f"{sum(1 for s in r.steps() if s.result)} steps applied"
            else:
                rolled = ", ".join(f"{rb.host} ({rb.phase})" for rb in r.rollbacks)
                r.comment = "failed" + (f"; rolled back: {rolled}" if rolled else "")
        r.finished_at = datetime.now(UTC)
        self.emit(ApplyEvent("done", message=r.comment, ok=r.ok))
        return r
