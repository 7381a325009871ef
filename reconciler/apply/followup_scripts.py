"""The scripts that follow a phase on its host: confirm, roll back, recover, read, snapshot again.

Each one sources the lib.sh the phase script installed in the phase's directory (and prints
`@@shoal-missing` when there is none: the phase never started there), so a controller that
restarted can still act on a phase it lost. They print the same marker protocol as the phase
(`reconciler.apply.sh_library`), which `reconciler.apply.phaselog` parses.
"""

from __future__ import annotations

import re

from reconciler.apply.host_phase import phase_dir
from reconciler.apply.sh_library import quote
from reconciler.plan.steps import Phase


def _preamble(plan_id: str, phase: Phase) -> str:
    b = quote(phase_dir(plan_id, phase))
    return (
        "set -u\n"
        f"if [ ! -f {b}/lib.sh ]; then echo '@@shoal-missing'; exit 3; fi\n"
        f". {b}/lib.sh\n"
        'echo "@@shoal-run $N"\n'
    )


def build_confirm_script(plan_id: str, phase: Phase) -> str:
    """Confirm a phase (run over a NEW connection): take the lock so no restore runs, disarm.

    Prints `@@shoal-confirm confirmed`, or `restored` with the timer's log when the timer (or
    anything else) took the lock first.
    """
    return _preamble(plan_id, phase) + (
        "if take_lock confirmed; then\n"
        "  disarm >/dev/null\n"
        "  echo '@@shoal-confirm confirmed'\n"
        "else\n"
        "  _by=$(lock_owner)\n"
        "  wait_done 600\n"
        '  echo "@@shoal-confirm restored $_by"\n'
        '  [ -s "$B/lockout.log" ] && cat "$B/lockout.log"\n'
        "fi\n"
    )


def build_rollback_script(plan_id: str, phase: Phase) -> str:
    """Undo a finished phase on the controller's request, then snapshot again for the proof."""
    return _preamble(plan_id, phase) + (
        "disarm >/dev/null\n"
        'rm -rf -- "$B/restore.lock" "$B/restore.done" "$B/post"\n'
        'mkdir -p "$B/post"\n'
        "take_lock controller\n"
        'sh "$B/restore.sh"\n'
        'sh "$B/snapshot.sh" post\n'
        'touch "$B/restore.done"\n'
    )


def build_recover_script(plan_id: str, phase: Phase) -> str:
    """After the controller lost a phase's channel: stop it if it still runs and restore.

    Whoever already restores (the phase itself, the timer) is waited for; a phase that finished
    but was never confirmed is rolled back too, because the controller never saw its result.
    A confirmed phase is rolled back as well (marked `recover-confirmed` first): whoever asks
    for a recovery gave up on the run, and a confirmed phase kept while the phases after it are
    undone would leave the host at a state no plan describes (see `reconciler.apply.recovery`).
    Prints the phase's log, then the restore's. A controller that dies again while this runs
    closes its channel: the restore goes on (SIGHUP and SIGPIPE ignored), so the next recovery
    finds it done instead of waiting for a restore that was cut off halfway.
    """
    return _preamble(plan_id, phase) + (
        "trap '' HUP PIPE\n"
        "if take_lock recover; then\n"
        "  disarm\n"
        "  abort_phase\n"
        '  sh "$B/restore.sh"\n'
        '  sh "$B/snapshot.sh" post\n'
        '  touch "$B/restore.done"\n'
        'elif [ "$(lock_owner)" = confirmed ]; then\n'
        "  mark recover-confirmed\n"
        "  disarm >/dev/null\n"
        '  rm -rf -- "$B/restore.lock" "$B/restore.done" "$B/post"\n'
        '  mkdir -p "$B/post"\n'
        "  take_lock recover\n"
        '  sh "$B/restore.sh"\n'
        '  sh "$B/snapshot.sh" post\n'
        '  touch "$B/restore.done"\n'
        "else\n"
        '  mark restore-by "$(lock_owner)"\n'
        "  wait_done 600 && mark restore-done\n"
        "fi\n"
        'cat "$B/phase.log" 2>/dev/null\n'
        '[ -s "$B/lockout.log" ] && cat "$B/lockout.log"\n'
        "exit 0\n"
    )


def build_status_script(plan_id: str, phase: Phase) -> str:
    """Read-only: the phase's logs as they are now (for a restarted controller)."""
    return _preamble(plan_id, phase) + (
        'cat "$B/phase.log" 2>/dev/null\n[ -s "$B/lockout.log" ] && cat "$B/lockout.log"\nexit 0\n'
    )


def build_snapshot_script(plan_id: str, phase: Phase, which: str) -> str:
    """Take the phase's snapshot again into `which` (e.g. "check"), for a later proof."""
    if not re.match(r"^[a-z]+$", which) or which == "pre":
        raise ValueError(f"bad snapshot name {which!r}")
    return _preamble(plan_id, phase) + f'sh "$B/snapshot.sh" {which}\n'
