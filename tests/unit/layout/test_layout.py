"""The layout ARCHITECTURE.md describes, held: imports point one way along the data flow, one
module talks SSH, the product never needs the lab, and modules stay small enough to read."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PRODUCT = ("reconciler", "states", "api")

# A folder may import its own layer and the layers before it, never one after it.
LAYER = {
    "reconciler.errors": 0,
    "reconciler.logfmt": 0,
    "reconciler.desired": 1,
    "reconciler.transport": 2,
    "reconciler.facts": 3,
    "reconciler.plan": 4,
    "states": 4,  # states and plan share value types (plan/steps.py) and call each other
    "reconciler.importer": 5,  # reads sources (and, from hosts, facts) into a desired repo
    "reconciler.verify": 5,
    "reconciler.apply": 6,
    "reconciler.server": 7,
    "api": 8,
    "reconciler.cli": 9,
}


def _room(module: str) -> str | None:
    parts = module.split(".")
    for size in (2, 1):
        if ".".join(parts[:size]) in LAYER:
            return ".".join(parts[:size])
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every module `path` imports, top level or inside a function (a lazy import counts)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def _product_files() -> list[Path]:
    return sorted(p for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py"))


def test_every_product_module_has_a_room() -> None:
    homeless = [
        str(p.relative_to(ROOT))
        for p in _product_files()
        if _room(_module_name(p)) is None and p != ROOT / "reconciler" / "__init__.py"
    ]
    assert homeless == []


def test_imports_point_one_way_along_the_data_flow() -> None:
    upward = []
    for path in _product_files():
        here = _room(_module_name(path))
        if here is None:
            continue
        for line, target in _imports(path):
            there = _room(target)
            if there is not None and LAYER[there] > LAYER[here]:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {here} imports {target}")
    assert upward == []


def test_only_the_ssh_transport_imports_asyncssh() -> None:
    users = {
        str(path.relative_to(ROOT))
        for path in _product_files()
        for _, target in _imports(path)
        if target.split(".")[0] == "asyncssh"
    }
    assert users == {"reconciler/transport/ssh.py"}


def test_the_product_never_imports_the_lab() -> None:
    uses = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _product_files()
        for line, target in _imports(path)
        if target.split(".")[0] in ("lab", "tests", "bench")
    ]
    assert uses == []


@pytest.mark.parametrize(("package", "limit"), [("reconciler", 500), ("states", 300)])
def test_modules_stay_small(package: str, limit: int) -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for p in (ROOT / package).rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > limit} == {}


def test_the_layer_checker_sees_an_upward_import(tmp_path: Path) -> None:
    # The checker itself: a plan module importing the executor is caught, a lazy one too.
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from reconciler.apply.executor import apply_plan\n")
    assert [t for _, t in _imports(bad)] == ["reconciler.apply.executor"]
    assert LAYER[_room("reconciler.apply.executor") or ""] > LAYER["reconciler.plan"]
