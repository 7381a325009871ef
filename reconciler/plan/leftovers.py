"""shoal's own working files on a host that no cluster uses any more, and the step removing them.

When the last cluster leaves a host, the removals give back everything the ledger lists; what is
left is shoal's bookkeeping: the ledger itself (empty now) and the director's nft files
(/var/lib/shoal/nft/shoal_dsr.nft, and the undo file a table removal writes). Keeping them
would claim the host is still shoal's and leave a stale table definition around, so the planner
removes them in the same plan, after every other step, instead of writing an empty ledger.

Only when nothing is owned any more and nothing was left unplanned: a host with a desired
state, a skipped removal or a non-empty ledger keeps its files. /var/lib/shoal/backups is
history (rollback scripts, snapshots), pruned by the phase scripts, and stays.
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.facts.hostfacts import HostFacts, Ledger
from reconciler.plan.steps import LowState, Phase, SkippedRemoval, Step
from states.common import make_step
from states.nft_dsr import SCRIPT_PATH, UNDO_PATH
from states.registry import kind_of

LEDGER_FILE = "/var/lib/shoal/ledger.json"  # reconciler.plan.planner.LEDGER_PATH
LEFTOVER_FILES = (SCRIPT_PATH, UNDO_PATH, LEDGER_FILE)  # the ledger last
LEFTOVERS_STATE_ID = "shoal-leftovers"


def _existing(facts: HostFacts) -> set[str]:
    if not facts.files.known or facts.files.value is None:
        return set()
    return {p for p in LEFTOVER_FILES if (i := facts.files.value.get(p)) is not None and i.exists}


def has_leftovers(facts: HostFacts) -> bool:
    """A host with an empty (known) ledger whose facts still show one of shoal's files."""
    ledger = facts.ledger
    if not ledger.known or ledger.value is None or not _empty(ledger.value):
        return False
    return bool(_existing(facts))


def _empty(ledger: Ledger) -> bool:
    return not any(ledger.entries.values()) and not ledger.sysctl_originals


def leftover_steps(
    host: str,
    facts: HostFacts,
    states: Sequence[LowState],
    new_ledger: Ledger,
    skipped: Sequence[SkippedRemoval],
    steps: Sequence[Step],
) -> list[Step] | None:
    """The removal of shoal's files when the host keeps nothing of shoal's; None otherwise.

    None means "the host is still shoal's": the planner writes the ledger as usual. An empty
    list means there is nothing left to remove.
    """
    if skipped or not _empty(new_ledger) or not facts.ledger.known:
        return None
    # A state that is not an absent form (`removes_only`): the host still wants something.
    if any(not kind_of(low.function).removes_only for low in states):
        return None
    written = {w.path for s in steps for w in s.writes}
    paths = [p for p in LEFTOVER_FILES if p in _existing(facts) or p in written]
    old = facts.ledger.value
    if old is not None and not _empty(old) and LEDGER_FILE not in paths:
        paths.append(LEDGER_FILE)  # it listed something, so the file is there
    if not paths:
        return []
    phase = max((s.phase for s in steps), default=Phase.REAL_SERVERS_CLEANUP)
    low = LowState(id=LEFTOVERS_STATE_ID, function="file.absent", host=host, phase=phase,
                   origin="ledger")  # fmt: skip
    step = make_step(
        low,
        "remove",
        "file",
        "remove shoal's own files: no cluster uses this host any more",
        before="\n".join(paths),
        # The executor snapshots every path an `rm` names and puts it back on rollback.
        commands=tuple(("rm", "-f", p) for p in paths),
    )
    return [step.model_copy(update={"require": tuple(s.id for s in steps)})]
