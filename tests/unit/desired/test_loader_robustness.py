"""Whatever a cluster file contains, the loader answers with a Desired or DesiredStateInvalid."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.desired.loader import load_tree, read_tree
from reconciler.errors import DesiredStateInvalid

EXAMPLE = Path(__file__).resolve().parents[3] / "fixtures" / "config-repo"
FILES = read_tree(EXAMPLE)
LINES = FILES["clusters/web.toml"].decode().splitlines()
VALUES = st.sampled_from(
    [
        '"x y"',
        "0",
        "-1",
        "70000",
        "1.5",
        "true",
        "[]",
        '["lvs1", 3]',
        "{}",
        "{ a = 1 }",
        '"""multi\nline"""',
        "'lit'",
        "1979-05-27",
        '"10.77.0.21"',
        '"lvs1"',
        '"wlc"',
    ]
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "dup", "value", "garble"]))
        if action == "drop":
            del lines[i]
        elif action == "dup":
            lines.insert(i, lines[i])
        elif action == "value" and "=" in lines[i]:
            key = lines[i].split("=", 1)[0]
            lines[i] = f"{key}= {draw(VALUES)}"
        else:
            lines[i] = draw(st.text(alphabet="ab =[]{}\"',.#\\\n", max_size=12))
        if not lines:
            break
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None)
@given(mutated())
def test_any_mutation_is_loaded_or_reported(text: str) -> None:
    files = {**FILES, "clusters/web.toml": text.encode()}
    try:
        load_tree(files)
    except DesiredStateInvalid as exc:
        assert exc.issues
        for issue in exc.issues:
            assert issue.file in files
            assert "https://" not in issue.message
            if issue.line is not None:
                assert 1 <= issue.line <= files[issue.file].count(b"\n") + 1
