"""Reading the repository's OpenSSH known_hosts: its format, and which host an entry covers.

The transport hands the text to the SSH library, which refuses unknown keys; this module exists so
that validation can say, before any connection, that a line is malformed or that an inventory host
has no pinned key at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "ssh-dss",
    }
)
MARKERS = frozenset({"@cert-authority", "@revoked"})


@dataclass(frozen=True, slots=True)
class KnownHostEntry:
    line: int
    marker: str | None
    patterns: tuple[str, ...]
    key_type: str
    key: str


@dataclass(frozen=True, slots=True)
class KnownHostsProblem:
    line: int
    column: int
    message: str


def host_token(address: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts: the address, or `[address]:port` off port 22."""
    return address if port == 22 else f"[{address}]:{port}"


def _key_problem(key_type: str, key: str) -> str | None:
    """Why `key` is not a public key blob of `key_type`, or None if it is one."""
    try:
        blob = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return "the key is not valid base64"
    length = struct.unpack(">I", blob[:4])[0] if len(blob) >= 4 else 0
    try:
        name = blob[4 : 4 + length].decode("ascii") if 0 < length <= len(blob) - 4 else ""
    except UnicodeDecodeError:
        name = ""
    if not name.isprintable() or not name:
        return "the key data is not an SSH public key"
    if name != key_type:
        return f"the key data is of type {name}, not {key_type}"
    return None


def parse_known_hosts(text: str) -> tuple[list[KnownHostEntry], list[KnownHostsProblem]]:
    """Every entry of a known_hosts text, and every line that is not a valid entry."""
    entries: list[KnownHostEntry] = []
    problems: list[KnownHostsProblem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [(m.group(), m.start() + 1) for m in re.finditer(r"\S+", line)]
        marker = None
        if fields[0][0].startswith("@"):
            if fields[0][0] not in MARKERS:
                problems.append(
                    KnownHostsProblem(number, fields[0][1], f"unknown marker {fields[0][0]}")
                )
                continue
            marker = fields.pop(0)[0]
        if len(fields) < 3:
            column = fields[-1][1] if fields else 1
            problems.append(
                KnownHostsProblem(number, column, "expected: host patterns, key type, base64 key")
            )
            continue
        (patterns, _), (key_type, type_col), (key, key_col) = fields[:3]
        base_type = key_type.removesuffix("-cert-v01@openssh.com")
        if base_type not in KEY_TYPES:
            problems.append(KnownHostsProblem(number, type_col, f"unknown key type {key_type}"))
            continue
        problem = _key_problem(key_type, key)
        if problem is not None:
            problems.append(KnownHostsProblem(number, key_col, problem))
            continue
        entries.append(KnownHostEntry(number, marker, tuple(patterns.split(",")), key_type, key))
    return entries, problems


def _pattern_matches(pattern: str, token: str) -> bool:
    if pattern.startswith("|1|"):
        parts = pattern.split("|")
        if len(parts) != 4:
            return False
        try:
            salt = base64.b64decode(parts[2], validate=True)
            digest = base64.b64decode(parts[3], validate=True)
        except (binascii.Error, ValueError):
            return False
        mine = hmac.new(salt, token.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(mine, digest)
    # OpenSSH wildcards are only '*' and '?'; brackets are literal (as in "[addr]:port").
    regex = "".join(
        ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()
    )
    return re.fullmatch(regex, token.lower()) is not None


def entry_matches(entry: KnownHostEntry, token: str) -> bool:
    """True if `entry` covers `token` (see `host_token`); a negated pattern that matches wins."""
    matched = False
    for pattern in entry.patterns:
        if pattern.startswith("!"):
            if _pattern_matches(pattern[1:], token):
                return False
        elif _pattern_matches(pattern, token):
            matched = True
    return matched


def plain_tokens(entries: list[KnownHostEntry]) -> frozenset[str]:
    """Tokens pinned by entries whose patterns are all plain names (no wildcard, hash, negation).

    Such an entry matches a token exactly when one of its patterns equals it, so a set lookup
    answers `has_key_for` for them; a big inventory would otherwise scan every entry per host.
    """
    out: set[str] = set()
    for e in entries:
        if e.marker == "@revoked" or any(
            p.startswith(("!", "|1|")) or "*" in p or "?" in p for p in e.patterns
        ):
            continue
        out.update(p.lower() for p in e.patterns)
    return frozenset(out)


def has_key_for(
    entries: list[KnownHostEntry], token: str, plain: frozenset[str] | None = None
) -> bool:
    """True if some entry (not a revocation) pins a key for `token`.

    `plain` (from `plain_tokens(entries)`) is a fast path; without it every entry is scanned.
    """
    if plain is not None and token.lower() in plain:
        return True
    return any(e.marker != "@revoked" and entry_matches(e, token) for e in entries)
