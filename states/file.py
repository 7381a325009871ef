"""`file.managed` / `file.absent`: a whole file's content and mode.

The content goes into the step as a FileWrite, which the executor writes atomically after
snapshotting the path under /var/lib/shoal/backups/<plan-id>/. The undo of a write over an
existing file is that snapshot (the facts carry the content of small text files only, for the
plan's diff), so such a step carries no undo argv; a file shoal created is undone by removing it.

A write's change is the file as it is (its content, when the facts carry it) against the file
as planned, so a plan shows a diff of the lines that change; a file without gathered content
(too large, binary, ...) shows its digest and mode, and why there is no content.

Ownership: only a file shoal created (absent before) is claimed for the ledger. A file that was
there before shoal wrote it is never deleted later, whatever the desired state says.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Annotated

from pydantic import AfterValidator, Field

from reconciler.facts.hostfacts import FileInfo
from reconciler.plan.steps import FileWrite, LowState
from states.args import Args
from states.base import Claim, PlanContext, StateResult
from states.common import FactUnknown, host_facts, known, make_step, skip
from states.kind import Ownership, StateKind

FUNCTION = "file.managed"
_PATH_RE = re.compile(r"^(/[A-Za-z0-9_.@+-]+)+$")


def _check_path(value: str) -> str:
    if not _PATH_RE.fullmatch(value) or "/../" in value + "/" or "/./" in value + "/":
        raise ValueError(f"{value!r} is not an absolute, normalised file path")
    return value


def _check_mode(value: str) -> str:
    return value.rjust(4, "0")


FilePath = Annotated[str, AfterValidator(_check_path)]
Mode = Annotated[str, Field(pattern=r"^0?[0-7]{3}$"), AfterValidator(_check_mode)]


class FileArgs(Args):
    path: FilePath
    content: str
    mode: Mode = "0644"


class FileAbsentArgs(Args):
    key: FilePath


def ledger_key(args: FileArgs) -> str:
    return args.path


@functools.lru_cache(maxsize=4096)
def sha256(content: str) -> str:
    # Kept: the hosts of a plan write a few distinct contents (one restore script for every real
    # server of a service), often the very same string, whose hash Python keeps.
    return hashlib.sha256(content.encode()).hexdigest()


def _info(low: LowState, ctx: PlanContext, path: str) -> FileInfo:
    files = known(host_facts(low, ctx).files, "files")
    info = files.get(path)
    if info is None:
        raise FactUnknown(f"{path} was not gathered")
    return info


def _describe(info: FileInfo, note: str = "") -> str | None:
    if not info.exists:
        return None
    return f"(sha256 {(info.sha256 or '?')[:12]}, mode {info.mode or '?'}{note})"


def current_text(info: FileInfo) -> str | None:
    """The "before" of a write: the file's content when gathered, else its digest and why not."""
    if not info.exists:
        return None
    if info.content is not None:
        return info.content
    why = info.content_unknown_reason or "content not gathered"
    return _describe(info, f"; content not shown: {why}")


def managed_result(low: LowState, args: FileArgs, info: FileInfo, *, claim: bool) -> StateResult:
    """Steps that make `info` equal `args`; `claim` records a file shoal creates in the ledger."""
    mode_now = info.mode.rjust(4, "0") if info.mode else None
    if info.exists and info.sha256 == sha256(args.content):
        if mode_now == args.mode:
            return StateResult()
        step = make_step(
            low,
            "chmod",
            "file",
            f"set the mode of {args.path} to {args.mode}",
            before=f"mode {mode_now}",
            after=f"mode {args.mode}",
            commands=(("chmod", args.mode, args.path),),
            undo=(("chmod", mode_now, args.path),) if mode_now else (),
        )
        return StateResult(steps=(step,))
    # The before side is the content itself: the mode it had goes in the description.
    mode = args.mode if mode_now in (None, args.mode) else f"{mode_now} -> {args.mode}"
    step = make_step(
        low,
        "write",
        "file",
        f"{'update' if info.exists else 'create'} {args.path} (mode {mode})",
        before=current_text(info),
        after=args.content,
        writes=(FileWrite(path=args.path, content=args.content, mode=args.mode),),
        # An existing file comes back from the executor's snapshot; a new one just goes.
        undo=() if info.exists else (("rm", "-f", args.path),),
    )
    claims = (Claim(FUNCTION, args.path),) if claim and not info.exists else ()
    return StateResult(steps=(step,), claims=claims)


def managed(low: LowState, args: FileArgs, ctx: PlanContext) -> StateResult:
    try:
        info = _info(low, ctx, args.path)
    except FactUnknown as exc:
        return skip(low, f"cannot plan {args.path}: {exc.reason}", unknown=exc.unread)
    return managed_result(low, args, info, claim=True)


def absent(low: LowState, args: FileAbsentArgs, ctx: PlanContext) -> StateResult:
    path = args.key
    try:
        info = _info(low, ctx, path)
    except FactUnknown as exc:
        return skip(low, f"not removing {path}: {exc.reason}", unknown=exc.unread)
    release = (Claim(FUNCTION, path),)
    if not info.exists:
        return StateResult(releases=release)
    step = make_step(
        low,
        "remove",
        "file",
        f"remove {path} (shoal created it)",
        before=_describe(info),
        commands=(("rm", "-f", path),),
        # undo: the executor's snapshot of the path (the facts hold no content to write back)
    )
    return StateResult(steps=(step,), releases=release)


MANAGED = StateKind(FUNCTION, FileArgs, managed, owns=Ownership(ledger_key, "file.absent", 60))
ABSENT = StateKind("file.absent", FileAbsentArgs, absent, removes_only=True)
