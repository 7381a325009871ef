"""The facts script's file section (`missing`, `stat`, `sha256sum` and `content` lines) to
`FileInfo`s.

Lines, one or more per path:
    missing <path>
    stat <octal mode> [<size>] <file type>|<path>   (stat -c 'stat %a %s %F|%n'; older
                                                     scripts printed no size)
    <sha256 hex>  <path>                            (sha256sum, regular files only)
    content <path> <base64>                         (regular files of at most
                                                     FILE_CONTENT_MAX bytes, `base64 -w0`)

The content travels as base64 so no byte of it can pass for a line of this section or a marker
of the script's output. It is kept only when it is what the digest says (the file may change
between the two reads), is no larger than the limit, and is UTF-8 text without NUL bytes;
otherwise `content_unknown_reason` says why there is none.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from reconciler.errors import FactParseError
from reconciler.facts.hostfacts import FILE_CONTENT_MAX, FileInfo

_SHA_RE = re.compile(r"^(?P<sha>[0-9a-f]{64})  (?P<path>/.*)$")
_STAT_RE = re.compile(
    r"^stat (?P<mode>[0-7]+) (?:(?P<size>[0-9]+) )?(?P<kind>[a-z ]+)\|(?P<path>/.*)$"
)
_CONTENT_RE = re.compile(r"^content (?P<path>/\S*) (?P<b64>[A-Za-z0-9+/]*={0,2})$")
_REGULAR = ("regular file", "regular empty file")


def _limit() -> str:
    return f"larger than {FILE_CONTENT_MAX // 1024} KiB"


def _decode(path: str, b64: str, sha: str | None) -> tuple[str | None, str | None]:
    """(content, None) or (None, why not) for one `content` line."""
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FactParseError("files", f"bad base64 content of {path}: {exc}") from exc
    if len(data) > FILE_CONTENT_MAX:
        return None, _limit()
    if sha is None or hashlib.sha256(data).hexdigest() != sha:
        return None, "content does not match its sha256 (changed while it was read?)"
    if b"\0" in data:
        return None, "binary (NUL bytes)"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "not UTF-8 text"


def _no_content_reason(kind: str, size: int | None, gathered: bool) -> str:
    if kind == "symbolic link":
        return "a symbolic link"
    if kind not in _REGULAR:
        return f"not a regular file ({kind})"
    if size is not None and size > FILE_CONTENT_MAX:
        return _limit()
    # The script sends every regular file within the limit that it can read; a script that
    # prints no sizes is older and sends no content at all.
    return "content could not be read" if gathered else "content not gathered (older script)"


def parse_file_lines(text: str) -> dict[str, FileInfo]:
    missing: list[str] = []
    stats: dict[str, tuple[str, str, int | None]] = {}
    shas: dict[str, str] = {}
    contents: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("missing /"):
            missing.append(line[len("missing ") :])
        elif m := _STAT_RE.match(line):
            size = int(m.group("size")) if m.group("size") is not None else None
            stats[m.group("path")] = (f"{int(m.group('mode'), 8):04o}", m.group("kind"), size)
        elif m := _SHA_RE.match(line):
            shas[m.group("path")] = m.group("sha")
        elif m := _CONTENT_RE.match(line):
            contents[m.group("path")] = m.group("b64")
        else:
            raise FactParseError("files", f"unexpected line {line!r}")
    orphans = (set(shas) | set(contents)) - set(stats)
    if orphans:
        raise FactParseError("files", f"a digest or content without a stat line: {sorted(orphans)}")
    # Sizes came with content lines: a script that prints sizes always tries to send content.
    sizes_known = any(size is not None for _, _, size in stats.values())
    out = {p: FileInfo(path=p, exists=False) for p in missing}
    for path, (mode, kind, size) in stats.items():
        sha = shas.get(path)
        content: str | None = None
        if path in contents:
            content, why = _decode(path, contents[path], sha)
        else:
            why = _no_content_reason(kind, size, sizes_known)
        out[path] = FileInfo(
            path=path,
            exists=True,
            mode=mode,
            kind=kind,
            sha256=sha,
            content=content,
            content_unknown_reason=why,
        )
    return out
