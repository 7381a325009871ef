"""One phase on one host: where its backup directory lives, and the limits it runs under.

Every script of a phase (`reconciler.apply.phase_script`, `reconciler.apply.followup_scripts`)
works in the phase's directory /var/lib/shoal/backups/<plan-id>/<NN-phase>/ on the host; its
lock-out timer has a pid file and a systemd unit name of its own. `HostPhase` holds what one
phase on one host is (its steps, the nonce of its output markers) and how long each part may
take, which the executor turns into transport timeouts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from reconciler.apply.snapshot_targets import SnapshotTargets, snapshot_targets
from reconciler.plan.steps import Phase, Step

STATE_DIR = "/var/lib/shoal"
BACKUP_ROOT = f"{STATE_DIR}/backups"

PLAN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NONCE_RE = re.compile(r"^[0-9a-f]{8,64}$")
# Backup directories kept per host (/var/lib/shoal/backups/<plan-id>), newest first.
KEEP_BACKUPS = 10

# Exit statuses of `timeout`: timed out, or killed after the grace period.
TIMEOUT_STATUSES = frozenset({124, 137})
KILL_GRACE = 2  # seconds between TERM and KILL for a timed-out command
SNAPSHOT_BUDGET = 30.0  # seconds a snapshot may take, for the transport timeout


def phase_key(phase: Phase) -> str:
    """The phase's directory name, e.g. "20-real_servers_prepare"."""
    return f"{int(phase)}-{phase.name.lower()}"


def phase_dir(plan_id: str, phase: Phase) -> str:
    if not PLAN_ID_RE.match(plan_id):
        raise ValueError(f"plan id {plan_id!r} cannot name a directory")
    return f"{BACKUP_ROOT}/{plan_id}/{phase_key(phase)}"


def lockout_pidfile(plan_id: str, phase: Phase) -> str:
    return f"{STATE_DIR}/lockout-{plan_id}-{phase_key(phase)}.pid"


def lockout_unit(plan_id: str, phase: Phase) -> str:
    return f"shoal-lockout-{plan_id}-{int(phase)}"


@dataclass(frozen=True, slots=True)
class HostPhase:
    """One phase on one host, and the limits it runs under."""

    plan_id: str
    phase: Phase
    host: str
    steps: tuple[Step, ...]
    nonce: str
    command_timeout: float = 60.0
    # Seconds before the timer restores an unconfirmed phase; None: no timer.
    lockout_timeout: int | None = None
    # Backup directories (plans) kept on the host, this one included; older ones are pruned.
    keep_backups: int = KEEP_BACKUPS

    def __post_init__(self) -> None:
        if not _NONCE_RE.match(self.nonce):
            raise ValueError("nonce must be lowercase hex")
        if self.keep_backups < 1:
            raise ValueError("keep_backups must be at least 1 (the running plan's own)")
        phase_dir(self.plan_id, self.phase)  # validates the plan id

    @property
    def dir(self) -> str:
        return phase_dir(self.plan_id, self.phase)

    @property
    def targets(self) -> SnapshotTargets:
        return snapshot_targets(self.steps)

    @property
    def command_seconds(self) -> int:
        return max(1, math.ceil(self.command_timeout))

    def step_budget(self, step: Step) -> float:
        """The longest one step can run: every command at its timeout, plus its drain."""
        per_command = self.command_seconds + KILL_GRACE + 1
        drain = math.ceil(step.drain.timeout) + 2 if step.drain else 0
        return per_command * len(step.commands) + len(step.writes) + drain

    def budget(self) -> float:
        """The longest the whole phase script can take: snapshots, steps, a full rollback."""
        steps = sum(self.step_budget(s) for s in self.steps)
        undo = (self.command_seconds + KILL_GRACE + 1) * sum(len(s.undo) for s in self.steps)
        return 3 * SNAPSHOT_BUDGET + steps + undo + 10
