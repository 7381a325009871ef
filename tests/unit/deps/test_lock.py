"""requirements.lock against pyproject.toml: what scripts/setup.sh installs is what the project
asks for, every file hash-checked. Fails when pyproject.toml changed without `make lock`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[3]
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+) \\$")
_HASH = re.compile(r"^    --hash=sha256:[0-9a-f]{64}( \\)?$")


def _lock() -> dict[str, tuple[Version, int]]:
    """name -> (version, number of hashes) of every pin in the lock."""
    pins: dict[str, tuple[Version, int]] = {}
    current: str | None = None
    for lineno, line in enumerate((ROOT / "requirements.lock").read_text().splitlines(), 1):
        if m := _PIN.match(line):
            current = canonicalize_name(m.group("name"))
            assert current not in pins, f"requirements.lock:{lineno}: {current} twice"
            pins[current] = (Version(m.group("version")), 0)
        elif line.startswith("    --hash"):
            assert _HASH.match(line) and current is not None, f"requirements.lock:{lineno}"
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        else:
            assert not line.strip() or line.lstrip().startswith("#"), (
                f"requirements.lock:{lineno}: unexpected {line!r}"
            )
    return pins


def _wanted() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tools = [
        line for line in (ROOT / "scripts/lock-tools.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    names = [*project["dependencies"], *project["optional-dependencies"]["dev"], *tools]
    return [Requirement(r) for r in names]


def test_every_pin_is_exact_and_hashed() -> None:
    pins = _lock()
    assert pins
    assert all(hashes >= 1 for _, hashes in pins.values()), pins


def test_the_lock_satisfies_pyproject_and_keeps_its_exact_pins() -> None:
    pins = _lock()
    for req in _wanted():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in requirements.lock: run `make lock`"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.lock has {name}=={version}, pyproject.toml wants {req}: `make lock`"
        )
        for spec in req.specifier:
            if spec.operator == "==":
                assert version == Version(spec.version), (name, version)
    assert pins[canonicalize_name("schemathesis")][0] == Version("4.32.5")
