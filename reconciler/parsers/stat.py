"""The facts script's file section (`missing`, `stat` and `sha256sum` lines) to `FileInfo`s.

Lines, one or more per path:
    missing <path>
    stat <octal mode> <file type>|<path>        (stat -c 'stat %a %F|%n')
    <sha256 hex>  <path>                         (sha256sum, regular files only)
"""

from __future__ import annotations

import re

from reconciler.errors import FactParseError
from reconciler.hostfacts import FileInfo

_SHA_RE = re.compile(r"^(?P<sha>[0-9a-f]{64})  (?P<path>/.*)$")
_STAT_RE = re.compile(r"^stat (?P<mode>[0-7]+) (?P<kind>[a-z ]+)\|(?P<path>/.*)$")


def parse_file_lines(text: str) -> dict[str, FileInfo]:
    missing: list[str] = []
    modes: dict[str, tuple[str, str]] = {}
    shas: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("missing /"):
            missing.append(line[len("missing ") :])
        elif m := _STAT_RE.match(line):
            modes[m.group("path")] = (f"{int(m.group('mode'), 8):04o}", m.group("kind"))
        elif m := _SHA_RE.match(line):
            shas[m.group("path")] = m.group("sha")
        else:
            raise FactParseError("files", f"unexpected line {line!r}")
    out = {p: FileInfo(path=p, exists=False) for p in missing}
    for path, (mode, kind) in modes.items():
        out[path] = FileInfo(path=path, exists=True, mode=mode, kind=kind, sha256=shas.get(path))
    orphans = set(shas) - set(modes)
    if orphans:
        raise FactParseError("files", f"a digest without a stat line: {sorted(orphans)}")
    return out
