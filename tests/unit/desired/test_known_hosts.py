"""known_hosts format checks and host matching, including OpenSSH's own hashed entries."""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler.desired.known_hosts import (
    entry_matches,
    has_key_for,
    host_token,
    parse_known_hosts,
)


def _real_key(tmp_path: Path) -> str:
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key.with_suffix(".pub").read_text().split()[1]


def test_token_form() -> None:
    assert host_token("10.77.0.11", 22) == "10.77.0.11"
    assert host_token("10.77.0.11", 2222) == "[10.77.0.11]:2222"


def test_plain_wildcard_negated_and_revoked(tmp_path: Path) -> None:
    key = _real_key(tmp_path)
    text = (
        f"10.77.0.11,lvs1 ssh-ed25519 {key}\n"
        f"10.77.0.2?,!10.77.0.23 ssh-ed25519 {key} comment\n"
        f"[10.77.0.31]:2222 ssh-ed25519 {key}\n"
        f"@revoked 10.77.0.40 ssh-ed25519 {key}\n"
        "# a comment\n\n"
    )
    entries, problems = parse_known_hosts(text)
    assert problems == []
    assert [e.line for e in entries] == [1, 2, 3, 4]
    assert has_key_for(entries, "10.77.0.11")
    assert has_key_for(entries, "10.77.0.21")
    assert not has_key_for(entries, "10.77.0.23")  # negated
    assert has_key_for(entries, "[10.77.0.31]:2222")
    assert not has_key_for(entries, "10.77.0.31")  # brackets are literal, not a class
    assert not has_key_for(entries, "10.77.0.40")  # only a revocation


def test_hashed_entry_written_by_ssh_keygen(tmp_path: Path) -> None:
    key = _real_key(tmp_path)
    known = tmp_path / "known_hosts"
    known.write_text(f"10.77.0.21 ssh-ed25519 {key}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True, capture_output=True)
    hashed = known.read_text()
    assert hashed.startswith("|1|")
    entries, problems = parse_known_hosts(hashed)
    assert problems == []
    assert entry_matches(entries[0], "10.77.0.21")
    assert not entry_matches(entries[0], "10.77.0.22")


def test_malformed_lines_are_located(tmp_path: Path) -> None:
    key = _real_key(tmp_path)
    text = (
        "10.77.0.11 ssh-ed25519\n"
        f"10.77.0.12 ssh-ed448 {key}\n"
        "10.77.0.13 ssh-ed25519 not*base64\n"
        f"10.77.0.14 ssh-rsa {key}\n"
        f"@trusted 10.77.0.15 ssh-ed25519 {key}\n"
    )
    entries, problems = parse_known_hosts(text)
    assert entries == []
    assert [(p.line, p.column, p.message) for p in problems] == [
        (1, 12, "expected: host patterns, key type, base64 key"),
        (2, 12, "unknown key type ssh-ed448"),
        (3, 24, "the key is not valid base64"),
        (4, 20, "the key data is of type ssh-ed25519, not ssh-rsa"),
        (5, 1, "unknown marker @trusted"),
    ]
