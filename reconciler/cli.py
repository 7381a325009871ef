"""The `shoal` command line (typer + rich). Each command is a thin wrapper; the work lives in
the module it names, so this file only wires options to functions."""

from __future__ import annotations

import typer

from lab.cli import lab_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(lab_app, name="lab", help="Bring the lab of real test hosts up or down.")


def main() -> None:
    app()
