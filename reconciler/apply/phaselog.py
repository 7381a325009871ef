"""Reading what a phase script printed, and comparing snapshots (pure).

`parse_log` turns the marker protocol of `reconciler.apply.sh_library` into a `PhaseLog`: the
snapshot sections taken before the phase and after a rollback, each step's commands with exit
status and output, the lock-out timer's state, and the rollback's undo commands. Output that is
not between markers is kept as `stray` (an unexpected shell error shows up there).

`compare_sections` is the raw half of the rollback proof: every section taken again after a
rollback must equal the one taken before, after removing only what changes on its own
(comment lines with a timestamp, packet counters, address lifetimes, and the elements of nft sets
and maps that traffic fills and time empties: the DSR director's flow maps).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any

_COUNTERS_RE = re.compile(r"\[\d+:\d+\]")
# Lifetimes count down; "tentative" is the kernel's duplicate address detection, still running.
_LIFETIME_KEYS = frozenset({"valid_life_time", "preferred_life_time", "tentative"})
# `nft list` output: a named set or map opens a block that its own indentation plus "}" closes.
_NFT_SET_RE = re.compile(r"^(\s*)(?:set|map) \S+ \{$")


@dataclass
class Section:
    name: str
    rc: int
    content: str


@dataclass
class CommandRun:
    # "c.<step>.<n>" command, "u.<step>.<n>" undo, "w.<step>.<file>" write,
    # "r.<step>.<n>" run again at the end of a rollback (Step.after_rollback)
    name: str
    rc: int
    output: str

    @property
    def step(self) -> int:
        return int(self.name.split(".")[1])

    @property
    def index(self) -> int:
        return int(self.name.split(".")[2])


@dataclass
class StepRun:
    index: int
    started: float | None = None
    ended: float | None = None
    rc: int | None = None
    commands: list[CommandRun] = field(default_factory=list)
    writes: list[CommandRun] = field(default_factory=list)
    drain_remaining: int | None = None
    drain_waited: int | None = None

    @property
    def duration(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return max(0.0, self.ended - self.started)


@dataclass
class RollbackLog:
    by: str
    undo: list[CommandRun] = field(default_factory=list)
    files: list[tuple[int, int]] = field(default_factory=list)  # (file index, rc)
    dropped_tables: list[str] = field(default_factory=list)
    done: bool = False


@dataclass
class PhaseLog:
    nonce: str | None = None
    pre: dict[str, Section] = field(default_factory=dict)
    post: dict[str, Section] = field(default_factory=dict)
    steps: dict[int, StepRun] = field(default_factory=dict)
    begun: bool = False
    end: str | None = None  # "ok" | "failed"; None: the phase never reported its end
    failed_step: int | None = None
    failed_rc: int | None = None
    lockout: list[str] = field(default_factory=list)  # armed/disarmed/fired/failed events
    rollbacks: list[RollbackLog] = field(default_factory=list)
    aborted: bool = False
    busy: bool = False
    missing: bool = False
    confirm: str | None = None  # "confirmed" | "restored"
    restore_by: str | None = None
    # A recover script found the phase confirmed (and rolled it back all the same).
    found_confirmed: bool = False
    # A recover script waited for someone else's restore (restore-by) and saw it finish.
    restore_done: bool = False
    stray: str = ""

    @property
    def rollback(self) -> RollbackLog | None:
        return self.rollbacks[-1] if self.rollbacks else None

    @property
    def rolled_back(self) -> bool:
        return any(r.done for r in self.rollbacks)

    def step(self, i: int) -> StepRun:
        return self.steps.setdefault(i, StepRun(index=i))


def _float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _int(s: str, default: int = -1) -> int:
    try:
        return int(s)
    except ValueError:
        return default


def parse_log(text: str) -> PhaseLog:
    """Parse the output of any phase or follow-up script (several logs may follow)."""
    log = PhaseLog()
    lines = text.splitlines(keepends=True)
    stray: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        bare = line.rstrip("\n")
        if bare.startswith("@@shoal-run "):
            log.nonce = log.nonce or bare.split()[1]
            continue
        if bare == "@@shoal-missing":
            log.missing = True
            continue
        if bare.startswith("@@shoal-confirm "):
            log.confirm = bare.split()[1]
            continue
        prefix = f"@@shoal {log.nonce} " if log.nonce else None
        if prefix is None or not bare.startswith(prefix):
            stray.append(line)
            continue
        words = bare[len(prefix) :].split()
        if not words:
            continue
        verb, args = words[0], words[1:]
        if verb == "begin" and args:
            name = args[0]
            end_prefix = f"{prefix}end {name} "
            body: list[str] = []
            rc = -1
            while i < len(lines):
                candidate = lines[i].rstrip("\n")
                i += 1
                if candidate.startswith(end_prefix):
                    rc = _int(candidate[len(end_prefix) :])
                    break
                body.append(lines[i - 1])
            content = "".join(body)
            # emit() prints a newline before the end marker so it always starts a line.
            content = content[:-1] if content.endswith("\n") else content
            _section(log, Section(name, rc, content))
        else:
            _marker(log, verb, args)
    log.stray = "".join(stray)
    return log


def _section(log: PhaseLog, sec: Section) -> None:
    kind, _, rest = sec.name.partition(".")
    if kind == "pre":
        log.pre[rest] = Section(rest, sec.rc, sec.content)
    elif kind == "post":
        log.post[rest] = Section(rest, sec.rc, sec.content)
    elif kind in ("c", "w", "u", "r"):
        run = CommandRun(sec.name, sec.rc, sec.content)
        if kind in ("u", "r"):  # an undo, or a command run again after the restores
            if not log.rollbacks:
                log.rollbacks.append(RollbackLog(by="unknown"))
            log.rollbacks[-1].undo.append(run)
        elif kind == "c":
            log.step(run.step).commands.append(run)
        else:
            log.step(run.step).writes.append(run)
    # Other sections (a later snapshot under another name) are not part of the phase.


def _marker(log: PhaseLog, verb: str, args: list[str]) -> None:
    if verb == "phase-begin":
        log.begun = True
    elif verb == "step-begin" and args:
        log.step(_int(args[0])).started = _float(args[1]) if len(args) > 1 else None
    elif verb == "step-end" and len(args) >= 2:
        st = log.step(_int(args[0]))
        st.rc = _int(args[1])
        st.ended = _float(args[2]) if len(args) > 2 else None
    elif verb == "drain" and len(args) >= 3:
        st = log.step(_int(args[0]))
        st.drain_remaining = _int(args[1])
        st.drain_waited = _int(args[2])
    elif verb == "phase-end" and args:
        log.end = args[0]
        if args[0] == "failed" and len(args) >= 3:
            log.failed_step = _int(args[1])
            log.failed_rc = _int(args[2])
    elif verb == "lockout":
        log.lockout.append(" ".join(args))
    elif verb == "rollback-begin":
        log.rollbacks.append(RollbackLog(by=args[0] if args else "unknown"))
    elif verb == "rollback-end":
        if log.rollbacks:
            log.rollbacks[-1].done = True
    elif verb == "restore-file" and len(args) >= 2 and log.rollbacks:
        log.rollbacks[-1].files.append((_int(args[0]), _int(args[1])))
    elif verb == "dropped-table" and log.rollbacks:
        log.rollbacks[-1].dropped_tables.append(" ".join(args))
    elif verb == "aborted-phase":
        log.aborted = True
    elif verb == "busy":
        log.busy = True
    elif verb == "recover-confirmed":
        log.found_confirmed = True
    elif verb == "restore-done":
        log.restore_done = True
    elif verb == "restore-by" and args:
        log.restore_by = args[0]


# --- snapshot comparison -----------------------------------------------------------------------


def _strip_save(text: str) -> str:
    """*-save output without its timestamped comments and its packet counters."""
    kept = [_COUNTERS_RE.sub("[0:0]", ln) for ln in text.splitlines() if not ln.startswith("#")]
    return "\n".join(kept)


def _drop_lifetimes(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_lifetimes(v) for k, v in value.items() if k not in _LIFETIME_KEYS}
    if isinstance(value, list):
        return [_drop_lifetimes(v) for v in value]
    return value


def _strip_addr(text: str) -> str:
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError:
        return text
    return json.dumps(_drop_lifetimes(data), indent=1, sort_keys=True)


def _is_dynamic(declaration: list[str]) -> bool:
    """A set/map whose elements the packet path adds (`dynamic`) or time removes (`timeout`)."""
    for line in declaration:
        words = line.split()
        if words[:1] == ["timeout"]:
            return True
        if words[:1] == ["flags"] and {"dynamic", "timeout"} & set("".join(words[1:]).split(",")):
            return True
    return False


def _strip_dynamic_elements(text: str) -> str:
    """`nft -s list table` output without the elements of dynamic/timeout sets and maps.

    The DSR director's `flows_*` map and `ends_*` set fill with every connection and empty as
    their timeouts pass, so two snapshots of an unchanged table differ while traffic flows. Their
    declarations, every rule, and the elements of every other set or map are kept byte for byte.
    """
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _NFT_SET_RE.match(lines[i])
        if m is None:
            out.append(lines[i])
            i += 1
            continue
        close = m.group(1) + "}"
        end = i + 1
        while end < len(lines) and lines[end] != close:
            end += 1
        body = lines[i + 1 : end]
        start = next(
            (k for k, ln in enumerate(body) if ln.lstrip().startswith("elements = {")), None
        )
        if start is not None and _is_dynamic(body[:start]):
            # The elements clause runs until its braces balance (it is last in the block).
            depth, stop = 0, start
            for stop in range(start, len(body)):
                depth += body[stop].count("{") - body[stop].count("}")
                if depth <= 0:
                    break
            body = body[:start] + body[stop + 1 :]
        out.append(lines[i])
        out.extend(body)
        i = end
    return "\n".join(out)


def normalise(name: str, content: str) -> str:
    """The part of a section that only a change can alter."""
    if name == "arptables" or name.startswith(("iptables_", "ip6tables_")):
        return _strip_save(content)
    if name == "addr" or name.startswith("addr."):
        return _strip_addr(content)
    if name == "nft":
        return _strip_dynamic_elements(content)
    return content


def compare_sections(before: dict[str, Section], after: dict[str, Section]) -> list[str]:
    """Every difference between two snapshots, as readable text (empty: equal)."""
    diffs: list[str] = []
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name), after.get(name)
        if b is None or a is None:
            diffs.append(f"{name}: taken {'after only' if b is None else 'before only'}")
            continue
        if b.rc != a.rc:
            diffs.append(f"{name}: exit status {b.rc} before, {a.rc} after")
        nb, na = normalise(name, b.content), normalise(name, a.content)
        if nb != na:
            udiff = difflib.unified_diff(
                nb.splitlines(), na.splitlines(), "before", "after", lineterm="", n=1
            )
            diffs.append(f"{name} differs:\n" + "\n".join(udiff))
    return diffs
