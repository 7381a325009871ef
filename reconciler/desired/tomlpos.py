"""Where a key sits in a TOML text: line and column for error messages.

tomllib returns plain dicts without positions, so this module scans the text once more and records,
for every concrete key path such as ``("service", 0, "real_server", 1, "host")``, where its key
and its value start. It is only run on text tomllib already accepted, so it can be lenient; a path
it cannot find falls back to its nearest recorded parent (a missing key points at its table).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal

KeyPath = tuple[str | int, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}#\n")


@dataclass(frozen=True, slots=True)
class Position:
    """1-based line and column (columns count characters, as tomllib's messages do)."""

    line: int
    column: int


class TomlPositions:
    """The positions of every key and value in one TOML document."""

    def __init__(self, text: str) -> None:
        self._line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        scanner = _Scanner(text)
        scanner.run()
        self._keys = scanner.keys
        self._values = scanner.values

    def _position(self, offset: int) -> Position:
        index = bisect.bisect_right(self._line_starts, offset) - 1
        return Position(index + 1, offset - self._line_starts[index] + 1)

    def find(self, path: KeyPath, at: Literal["key", "value"] = "value") -> Position | None:
        """The position of `path` itself, or of its nearest recorded parent; None if none is."""
        for end in range(len(path), 0, -1):
            prefix = path[:end]
            # Only the exact path may point at its value: for a parent the key is the better spot.
            table = self._values if at == "value" and end == len(path) else self._keys
            offset = table.get(prefix, self._keys.get(prefix))
            if offset is not None:
                return self._position(offset)
        return None


class _Scanner:
    """A small recursive scanner for valid TOML; it records offsets, it does not build values."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.keys: dict[KeyPath, int] = {}
        self.values: dict[KeyPath, int] = {}
        self.array_tables: dict[KeyPath, int] = {}

    # --- low level ---------------------------------------------------------------------------

    def _peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def _skip_spaces(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def _skip_blank(self) -> None:
        """Spaces, newlines and comments (inside arrays, and between statements)."""
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r\n":
                self.i += 1
            elif c == "#":
                self._skip_line()
            else:
                return

    def _skip_line(self) -> None:
        end = self.s.find("\n", self.i)
        self.i = len(self.s) if end < 0 else end + 1

    def _string(self) -> str:
        """Consume a string of any of the four kinds; returns its (roughly unescaped) text."""
        s = self.s
        for quote in ('"""', "'''"):
            if s.startswith(quote, self.i):
                start = self.i + 3
                j = start
                while j < len(s):
                    if quote[0] == '"' and s[j] == "\\":
                        j += 2
                        continue
                    if s.startswith(quote, j):
                        # In a run of 4 or 5 quotes the extra ones belong to the body.
                        end = j
                        while end < len(s) and s[end] == quote[0]:
                            end += 1
                        self.i = end
                        return s[start : end - 3]
                    j += 1
                self.i = len(s)
                return s[start:]
        quote = s[self.i]
        j = self.i + 1
        chars: list[str] = []
        while j < len(s) and s[j] != quote and s[j] != "\n":
            if quote == '"' and s[j] == "\\" and j + 1 < len(s):
                chars.append(s[j + 1])
                j += 2
                continue
            chars.append(s[j])
            j += 1
        self.i = j + 1
        return "".join(chars)

    def _key(self) -> list[tuple[str, int]]:
        """A dotted key: its parts, each with the offset where it starts."""
        parts: list[tuple[str, int]] = []
        while self.i < len(self.s):
            self._skip_spaces()
            start = self.i
            c = self._peek()
            if c in ('"', "'"):
                parts.append((self._string(), start))
            else:
                while self.i < len(self.s) and self.s[self.i] in _BARE_KEY_CHARS:
                    self.i += 1
                if self.i == start:
                    break
                parts.append((self.s[start : self.i], start))
            self._skip_spaces()
            if self._peek() != ".":
                break
            self.i += 1
        return parts

    def _record_key(self, path: KeyPath, offset: int) -> None:
        self.keys.setdefault(path, offset)

    # --- structure ---------------------------------------------------------------------------

    def run(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip_blank()
            if self.i >= len(self.s):
                return
            before = self.i
            if self._peek(2) == "[[":
                table = self._header(array=True)
            elif self._peek() == "[":
                table = self._header(array=False)
            else:
                self._keyval(table)
            self._skip_spaces()
            if self.i < len(self.s) and self.s[self.i] != "\n":
                self._skip_line()  # a trailing comment
            if self.i == before:  # never loop on input we do not understand
                self._skip_line()

    def _resolve(self, names: list[str]) -> KeyPath:
        """Concrete path of a header's parent parts: an array of tables means its last element."""
        path: KeyPath = ()
        for name in names:
            path += (name,)
            count = self.array_tables.get(path)
            if count:
                path += (count - 1,)
        return path

    def _header(self, *, array: bool) -> KeyPath:
        start = self.i
        self.i += 2 if array else 1
        parts = self._key()
        self.i += 2 if array else 1
        names = [name for name, _ in parts]
        if not names:
            return ()
        if array:
            parent = self._resolve(names[:-1])
            array_path = (*parent, names[-1])
            index = self.array_tables.get(array_path, 0)
            self.array_tables[array_path] = index + 1
            self._record_key(array_path, start)
            path: KeyPath = (*array_path, index)
        else:
            path = self._resolve(names)
        self._record_key(path, start)
        self.values.setdefault(path, start)
        return path

    def _keyval(self, base: KeyPath) -> None:
        parts = self._key()
        if not parts:
            return
        path = base
        for name, offset in parts:
            path = (*path, name)
            self._record_key(path, offset)
        self._skip_spaces()
        if self._peek() == "=":
            self.i += 1
            self._skip_spaces()
            self._value(path)

    def _value(self, path: KeyPath) -> None:
        self.values.setdefault(path, self.i)
        c = self._peek()
        if c in ('"', "'"):
            self._string()
        elif c == "[":
            self.i += 1
            index = 0
            while self.i < len(self.s):
                self._skip_blank()
                if self._peek() == "]":
                    self.i += 1
                    return
                element = (*path, index)
                self._record_key(element, self.i)
                before = self.i
                self._value(element)
                index += 1
                self._skip_blank()
                if self._peek() == "," or self.i == before:
                    self.i += 1
        elif c == "{":
            self.i += 1
            while self.i < len(self.s):
                self._skip_spaces()
                if self._peek() == "}":
                    self.i += 1
                    return
                before = self.i
                self._keyval(path)
                self._skip_spaces()
                if self._peek() == "," or self.i == before:
                    self.i += 1
        else:
            while self.i < len(self.s) and self.s[self.i] not in _SCALAR_END:
                self.i += 1
