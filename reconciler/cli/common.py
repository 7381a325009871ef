"""Terminal output that `shoal plan` and `shoal apply` share: consoles, markup lines, errors.

Both commands print rich markup to stdout, progress to stderr, and turn an error into either
`error:` lines or, with `--json`, one JSON document carrying the exit status.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from rich.console import Console
from rich.markup import escape


def consoles(console: Console | None) -> tuple[Console, Console]:
    """The output and the progress console; a console given (tests) serves as both."""
    if console is not None:
        return console, console
    return Console(), Console(stderr=True)


def print_lines(out: Console, lines: Iterable[str]) -> None:
    """Print markup lines as written: no guessed highlighting, long lines not wrapped."""
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True)


def fail(out: Console, as_json: bool, messages: list[str], status: int) -> int:
    """Report `messages` as errors and return `status`, the command's exit status."""
    if as_json:
        out.print_json(json.dumps({"errors": messages, "exit_status": status}))
    else:
        print_lines(out, (f"[red]error:[/] {escape(m)}" for m in messages))
    return status
