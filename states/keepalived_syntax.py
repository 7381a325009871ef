"""keepalived.conf as a tree of statements: words, the place they were read, nested blocks.

The syntax (keepalived.conf(5)): whitespace-separated words; `#` or `!` starts a comment that
runs to the end of the line; a double-quoted string is one word; `{` opens the block of the
statement before it and `}` closes it, on the same line or later ones; `include GLOB` reads the
matching files (sorted, relative to the including file's directory) in place. keepalived's
conditional lines (`@name ...`, `@^name ...`) and parameters (`$NAME=...`, `$NAME`) depend on the
machine keepalived runs on, so they are refused with the line rather than guessed.

Two readers share it: the importer (`parse_keepalived_conf`, a file on disk, includes read) and
the keepalived state (`parse_keepalived_text`, the installed file as the facts carry it, where an
include's parts are not known: it is recorded in `includes`, not read).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.errors import ConfigIssue

MAX_INCLUDE_DEPTH = 8


@dataclass(frozen=True, slots=True)
class Origin:
    """Where something was read: file and line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class KeepalivedSyntaxInvalid(ValueError):
    """The text is not keepalived.conf syntax (or uses what cannot be read off the machine)."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass(slots=True)
class Statement:
    words: list[str]
    origin: Origin
    block: list[Statement] | None = None  # None: no `{ ... }` followed

    @property
    def keyword(self) -> str:
        return self.words[0] if self.words else ""

    def children(self, keyword: str) -> list[Statement]:
        return [s for s in self.block or [] if s.keyword == keyword]

    def value(self, keyword: str) -> Statement | None:
        """The last `keyword` statement in the block (keepalived keeps the last one)."""
        found = self.children(keyword)
        return found[-1] if found else None


@dataclass(slots=True)
class _Token:
    text: str
    origin: Origin
    column: int
    newline_before: bool = False
    quoted: bool = False


@dataclass(slots=True)
class _Reader:
    issues: list[ConfigIssue] = field(default_factory=list)
    # False: an include is not read but recorded (its pattern and place) in `includes`.
    read_includes: bool = True
    includes: list[tuple[str, Origin]] = field(default_factory=list)

    def name(self, path: Path) -> str:
        # As given, and includes relative to it: the operator finds the file from the message.
        return str(path)

    def refuse(self, token: _Token, message: str) -> None:
        self.at(token.origin, token.column, message)

    def at(self, origin: Origin, column: int | None, message: str) -> None:
        self.issues.append(
            ConfigIssue(file=origin.file, message=message, line=origin.line, column=column)
        )

    def tokens(self, path: Path, depth: int) -> list[_Token]:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.issues.append(ConfigIssue(file=self.name(path), message=f"cannot read: {exc}"))
            return []
        return self.text_tokens(text, path, depth)

    def text_tokens(self, text: str, path: Path, depth: int) -> list[_Token]:
        out: list[_Token] = []
        for number, line in enumerate(text.splitlines(), start=1):
            origin = Origin(self.name(path), number)
            words = _split_line(line)
            if words and words[0][1] == "include" and not words[0][2]:
                if self.read_includes:
                    out += self._include(path, origin, words, depth)
                else:
                    self.includes.append((" ".join(w for _, w, _ in words[1:]), origin))
                continue
            for i, (column, word, quoted) in enumerate(words):
                token = _Token(word, origin, column, newline_before=i == 0, quoted=quoted)
                if not quoted and (word.startswith("@") or word.startswith("$")):
                    what = "conditional line" if word.startswith("@") else "parameter"
                    self.refuse(token, f"keepalived {what} {word!r} depends on the machine "
                                "keepalived runs on: expand it before importing")
                    break
                out.append(token)
        return out

    def _include(
        self, path: Path, origin: Origin, words: list[tuple[int, str, bool]], depth: int
    ) -> list[_Token]:
        column = words[0][0]
        if len(words) != 2:
            self.at(origin, column, "include takes one file name or pattern")
            return []
        if depth >= MAX_INCLUDE_DEPTH:
            self.at(origin, column, f"includes nest deeper than {MAX_INCLUDE_DEPTH} files "
                    "(a loop?)")
            return []
        pattern = words[1][1]
        base = Path(pattern) if Path(pattern).is_absolute() else path.parent / pattern
        matches = sorted(glob.glob(str(base)))
        if not matches:
            self.at(origin, words[1][0], f"include {pattern!r} matches no file")
        out: list[_Token] = []
        for match in matches:
            included = self.tokens(Path(match), depth + 1)
            if included:
                included[0].newline_before = True
            out += included
        return out


def _split_line(line: str) -> list[tuple[int, str, bool]]:
    """(1-based column, word, quoted) for each word of one line, comments dropped."""
    words: list[tuple[int, str, bool]] = []
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if ch.isspace():
            i += 1
            continue
        if ch in "#!":
            break
        if ch in "{}":
            words.append((i + 1, ch, False))
            i += 1
            continue
        if ch == '"':
            end = line.find('"', i + 1)
            end = n if end < 0 else end
            words.append((i + 1, line[i + 1 : end], True))
            i = end + 1
            continue
        start = i
        while i < n and not line[i].isspace() and line[i] not in "{}":
            i += 1
        words.append((start + 1, line[start:i], False))
    return words


def parse_keepalived_conf(path: Path) -> list[Statement]:
    """The statements of `path` with its includes read in; KeepalivedSyntaxInvalid on bad
    syntax."""
    reader = _Reader()
    return _parse(reader, reader.tokens(path, 0))


@dataclass(frozen=True, slots=True)
class ParsedText:
    statements: list[Statement]
    # Each include line (pattern, place): its parts are not in `statements`.
    includes: tuple[tuple[str, Origin], ...]


def parse_keepalived_text(text: str, name: str) -> ParsedText:
    """The statements of one file's text, includes recorded and not read; KeepalivedSyntaxInvalid
    on bad syntax."""
    reader = _Reader(read_includes=False)
    statements = _parse(reader, reader.text_tokens(text, Path(name), 0))
    return ParsedText(statements, tuple(reader.includes))


def _parse(reader: _Reader, tokens: list[_Token]) -> list[Statement]:
    if reader.issues:
        # A refused line leaves its braces unread: blocks after it would only add echoes.
        raise KeepalivedSyntaxInvalid(reader.issues)
    statements, _end = _statements(reader, tokens, 0, top=True)
    if reader.issues:
        raise KeepalivedSyntaxInvalid(reader.issues)
    return statements


def _statements(
    reader: _Reader, tokens: list[_Token], i: int, *, top: bool
) -> tuple[list[Statement], int]:
    out: list[Statement] = []
    current: Statement | None = None
    while i < len(tokens):
        token = tokens[i]
        if token.text == "}" and not token.quoted:
            if top:
                reader.refuse(token, "'}' closes no block")
                i += 1
                continue
            return out, i + 1
        if token.text == "{" and not token.quoted:
            head = current if current is not None and current.block is None else None
            if head is None:
                head = Statement([], token.origin)
                out.append(head)
            head.block, i = _statements(reader, tokens, i + 1, top=False)
            current = None
            continue
        if token.newline_before or current is None or current.block is not None:
            current = Statement([token.text], token.origin)
            out.append(current)
        else:
            current.words.append(token.text)
        i += 1
    if not top:
        last = tokens[-1] if tokens else None
        if last is not None:
            reader.refuse(last, "a block opened with '{' is never closed")
    return out, i
