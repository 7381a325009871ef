"""The `shoal` command line (typer + rich). Each command is a thin wrapper; the work lives in
the module it names, so this file only wires options to functions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lab.cli import lab_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(lab_app, name="lab", help="Bring the lab of real test hosts up or down.")


@app.command()
def validate(
    repo: Annotated[Path, typer.Argument(help="the config repository (a directory)")] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON document")] = False,
) -> None:
    """Check a config repository: every problem as file:line:col, or a short summary."""
    from reconciler.validate_cmd import run_validate

    raise typer.Exit(run_validate(repo, as_json=as_json, echo=typer.echo))


@app.command()
def verify(
    repo: Annotated[Path, typer.Argument(help="the config repository (a directory)")] = Path("."),
    key: Annotated[
        Path,
        typer.Option("--key", envvar="SHOAL_SSH_KEY", help="SSH private key for the hosts"),
    ] = Path("~/.ssh/id_ed25519"),
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON document")] = False,
) -> None:
    """Send real traffic through every VIP and check who answers ARP; name the host at fault."""
    from reconciler.verify_cmd import run_verify

    raise typer.Exit(
        run_verify(repo, client_key=key.expanduser(), as_json=as_json, echo=typer.echo)
    )


def main() -> None:
    app()
