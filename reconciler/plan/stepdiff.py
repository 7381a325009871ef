"""Unified diffs of a step's change, under the file's name when the step writes a whole file.

`shoal plan` and the HTTP API both show them. A step whose `after` is the whole new content of
a file (file.managed's write, keepalived.config's install) is diffed as that file:

    --- /etc/keepalived/keepalived.conf (on lvs1)
    +++ /etc/keepalived/keepalived.conf (planned)
    @@ -40,6 +40,14 @@
    ...

Its `before` is the file's content when the facts carried it, so the diff holds exactly the
lines that change; otherwise it is one line with the digest and why there is no content, and
the diff shows that line against the whole new file. Lines are split at "\\n" only, as the file
is, and a last line without one is marked as diff(1) marks it: a file's bytes are what is
approved, so even a missing final newline shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import SequenceMatcher

from reconciler.plan.steps import Step

CONTEXT = 3
NO_NEWLINE = "\\ No newline at end of file"


def file_target(step: Step) -> tuple[str, str | None] | None:
    """(path, planned mode) of the file whose whole new content is the step's `after`."""
    after = step.change.after
    if after is None:
        return None
    for write in step.writes:
        if write.content == after:
            return write.path, write.mode
    if step.function == "keepalived.config":
        # The install step renames the validated temp file (written by the step before) into
        # place: the file is the rename's target.
        for argv in step.commands:
            if len(argv) == 4 and argv[:2] == ("mv", "-f"):
                return argv[3], None
    return None


def _lines(text: str | None) -> list[str]:
    """Lines with their "\\n" kept, so a last line without one differs from one with it."""
    if not text:
        return []
    parts = [line + "\n" for line in text.split("\n")]
    if parts[-1] == "\n":
        parts.pop()  # the text ended with a newline
    else:
        parts[-1] = parts[-1][:-1]
    return parts


def _range(start: int, stop: int) -> str:
    # As difflib and diff(1) write it: "N" for one line, "N,0" (the line before) for none.
    length = stop - start
    if length == 1:
        return str(start + 1)
    return f"{start + 1 if length else start},{length}"


def _body(prefix: str, lines: Sequence[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if line.endswith("\n"):
            out.append(prefix + line[:-1])
        else:
            out += [prefix + line, NO_NEWLINE]
    return out


def unified_diff(
    before: str | None, after: str | None, fromfile: str, tofile: str, context: int = CONTEXT
) -> list[str]:
    """The unified diff of two texts, headers first; [] when they are the same."""
    a, b = _lines(before), _lines(after)
    hunks: list[str] = []
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    for group in matcher.get_grouped_opcodes(context):
        first, last = group[0], group[-1]
        hunks.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                hunks += _body(" ", a[i1:i2])
                continue
            hunks += _body("-", a[i1:i2])
            hunks += _body("+", b[j1:j2])
    if not hunks:
        return []
    return [f"--- {fromfile}", f"+++ {tofile}", *hunks]


def file_diff(step: Step) -> list[str] | None:
    """The diff of a step that writes a whole file (None for any other step); [] when the
    content does not change (a rewrite for the mode or the ledger's sake)."""
    target = file_target(step)
    if target is None:
        return None
    path, mode = target
    where = "on" if step.change.before is not None else "absent on"
    now = f"{path} ({where} {step.host})"
    planned = f"{path} (planned, mode {mode})" if mode else f"{path} (planned)"
    return unified_diff(step.change.before, step.change.after, now, planned)
