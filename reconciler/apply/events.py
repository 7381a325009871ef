"""Progress of an apply, for a display: `ApplyEvent`, and the phase names events carry.

`apply_plan` calls its `on_event` handler for every event as it happens ("start", each phase,
each host's start and end, each step, each rollback, a wait for a lock-out timer, verification,
"done"); `shoal apply` draws its progress rows from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from reconciler.apply.runresult import RollbackReport, StepResult
from reconciler.plan.steps import Phase

EventKind = Literal[
    "start", "phase", "host-start", "step", "host-done", "rollback", "wait", "verify", "done"
]


@dataclass(frozen=True, slots=True)
class ApplyEvent:
    """Progress for a display: what is happening, on which host and phase."""

    kind: EventKind
    phase: str | None = None
    host: str | None = None
    message: str = ""
    ok: bool | None = None
    step: StepResult | None = None
    rollback: RollbackReport | None = None


EventHandler = Callable[[ApplyEvent], None]


def phase_name(phase: Phase) -> str:
    return phase.name.lower()
