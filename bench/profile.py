"""Reading py-spy's collapsed stacks (`--format raw`): where the time goes, by function (pure).

Each line is `frame;frame;...;leaf COUNT`, frames as `function (file:line)`. Self time is the
leaf's; total time counts a function once per stack it appears in.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


@dataclass(frozen=True, slots=True)
class FrameStat:
    name: str  # "file:function"
    self_samples: int
    total_samples: int


def frame_name(frame: str, root: str = "") -> str:
    m = _FRAME_RE.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for prefix in (root, "/"):
        if prefix and path.startswith(prefix):
            path = path[len(prefix) :].lstrip("/")
            break
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    return f"{path}:{m.group('func')}"


def parse_collapsed(text: str, root: str = "") -> tuple[int, list[FrameStat]]:
    """(total samples, per-function stats sorted by total then self samples)."""
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [frame_name(f, root) for f in stack.split(";") if f]
        if not frames:
            continue
        self_c[frames[-1]] += n
        for name in set(frames):
            total_c[name] += n
    stats = [FrameStat(k, self_c[k], total_c[k]) for k in total_c]
    stats.sort(key=lambda s: (-s.total_samples, -s.self_samples, s.name))
    return total, stats


def summary(text: str, root: str = "", only: tuple[str, ...] = (), top: int = 12) -> str:
    """The top functions by total and by self time, as text lines with percentages."""
    total, stats = parse_collapsed(text, root)
    if total == 0:
        return "no samples"
    picked = [s for s in stats if not only or s.name.startswith(only)]
    by_total = picked[:top]
    by_self = sorted(stats, key=lambda s: (-s.self_samples, s.name))[:top]
    lines = [f"{total} samples; by total time (own code):"]
    lines += [f"  {100 * s.total_samples / total:5.1f}%  {s.name}" for s in by_total]
    lines += ["by self time (any code):"]
    lines += [
        f"  {100 * s.self_samples / total:5.1f}%  {s.name}" for s in by_self if s.self_samples
    ]
    return "\n".join(lines)
