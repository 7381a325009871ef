"""The `shoal` command line (typer + rich). Each command is a thin wrapper; the work lives in
the module it names, so this file only wires options to functions."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

# shoal uses no pydantic plugin, and looking plugins up reads the metadata of every installed
# distribution when the first model is built, on every start of the command. Set
# PYDANTIC_DISABLE_PLUGINS yourself (even to "") to have them looked up.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import typer
from pydantic import SecretStr

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

# The options several commands take, declared once so they read and behave the same everywhere.
RepoArgument = Annotated[Path, typer.Argument(help="the config repository (a directory)")]
KeyOption = Annotated[
    Path, typer.Option("--key", envvar="SHOAL_SSH_KEY", help="SSH private key for the hosts")
]
DEFAULT_KEY = Path("~/.ssh/id_ed25519")
JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON document")]
BecomePasswordFileOption = Annotated[
    Path | None,
    typer.Option(
        "--become-password-file",
        help="sudo password (file of mode 600) for become = \"sudo\" hosts whose sudoers asks "
        "for one; else $SHOAL_BECOME_PASSWORD_FILE or $SHOAL_BECOME_PASSWORD",
    ),
]


def become_password(password_file: Path | None) -> SecretStr | None:
    """The sudo password given to this command, if any; a clear error (exit 2) if unusable."""
    from reconciler.transport.become_password import BecomePasswordError, load_become_password

    try:
        return load_become_password(password_file.expanduser() if password_file else None)
    except BecomePasswordError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@contextmanager
def store_errors() -> Iterator[None]:
    """A store that cannot be opened (a bad --store URL, a database not reachable): its name
    (without a password) and why, exit 2."""
    from reconciler.server.store.connection import StoreUnavailable
    from reconciler.server.store.database import StoreUrlError

    try:
        yield
    except (StoreUrlError, StoreUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def validate(
    repo: RepoArgument = Path("."),
    as_json: JsonOption = False,
) -> None:
    """Check a config repository: every problem as file:line:col, or a short summary."""
    from reconciler.cli.validate import run_validate

    raise typer.Exit(run_validate(repo, as_json=as_json, echo=typer.echo))


@app.command("import")
def import_(
    target: Annotated[Path, typer.Argument(help="the repository to write (new or empty)")],
    known_hosts: Annotated[
        Path, typer.Option("--known-hosts", help="OpenSSH known_hosts with the hosts' keys")
    ],
    lvs_cf: Annotated[Path | None, typer.Option("--lvs-cf", help="Piranha's lvs.cf")] = None,
    keepalived_conf: Annotated[
        list[str] | None,
        typer.Option("--keepalived-conf", help="[NAME=]FILE: a director's keepalived.conf "
                     "(NAME: its inventory name); once per director"),
    ] = None,
    inventory: Annotated[
        Path | None, typer.Option("--inventory", help="an inventory.toml naming the hosts")
    ] = None,
    arp_method: Annotated[str, typer.Option("--arp-method", help="the real servers' method")] = (
        "sysctl"
    ),
    director: Annotated[
        str | None, typer.Option("--director", help="backend: keepalived, ipvsadm, nftables")
    ] = None,
    cluster_name: Annotated[
        str, typer.Option("--cluster-name", help="for lvs.cf and --from-hosts")
    ] = "lvs",
    allow_partial: Annotated[
        bool, typer.Option("--allow-partial", help="write what can be imported, list the rest")
    ] = False,
    from_hosts: Annotated[
        Path | None,
        typer.Option("--from-hosts", help="an inventory.toml: read its hosts' live state over "
                     "SSH (keys pinned by --known-hosts)"),
    ] = None,
    key: KeyOption = DEFAULT_KEY,
    as_json: JsonOption = False,
) -> None:
    """Write a config repository from a running cluster: its hosts, lvs.cf or keepalived.conf."""
    from reconciler.cli.import_cmd import parse_director_file, run_import_cmd
    from reconciler.importer.run import ImportRequest

    req = ImportRequest(
        target=target, known_hosts=known_hosts, lvs_cf=lvs_cf,
        keepalived_confs=tuple(parse_director_file(s) for s in keepalived_conf or ()),
        inventory=inventory, arp_method=arp_method, backend=director,
        cluster_name=cluster_name, allow_partial=allow_partial, from_hosts=from_hosts,
    )  # fmt: skip
    raise typer.Exit(run_import_cmd(req, as_json=as_json, echo=typer.echo,
                                    client_key=key.expanduser()))  # fmt: skip


@app.command()
def export(
    repo: RepoArgument,
    director: Annotated[str, typer.Option("--director", help="the director's inventory name")],
    out: Annotated[Path | None, typer.Option("--out", help="file to write; default stdout")] = None,
) -> None:
    """Print the keepalived.conf shoal renders for one director of a config repository."""
    from reconciler.cli.import_cmd import run_export

    raise typer.Exit(run_export(repo, director, out, typer.echo))


@app.command()
def verify(
    repo: RepoArgument = Path("."),
    key: KeyOption = DEFAULT_KEY,
    as_json: JsonOption = False,
    become_password_file: BecomePasswordFileOption = None,
) -> None:
    """Send real traffic through every VIP and check who answers ARP; name the host at fault."""
    from reconciler.cli.verify import run_verify

    raise typer.Exit(
        run_verify(
            repo,
            client_key=key.expanduser(),
            become_password=become_password(become_password_file),
            as_json=as_json,
            echo=typer.echo,
        )
    )


@app.command()
def facts(
    host: Annotated[str, typer.Argument(help="an inventory host name")],
    repo: Annotated[Path, typer.Option("--repo", help="the config repository")] = Path("."),
    key: KeyOption = DEFAULT_KEY,
    as_json: JsonOption = False,
    become_password_file: BecomePasswordFileOption = None,
) -> None:
    """Gather one host's facts in one SSH round trip and print them."""
    from reconciler.cli.facts import run_facts

    raise typer.Exit(
        run_facts(
            repo,
            host,
            client_key=key.expanduser(),
            become_password=become_password(become_password_file),
            as_json=as_json,
            echo=typer.echo,
        )
    )


# The store of serve, token, lock and unlock: one of the commands' own options, not a setting
# of the repository; a URL may carry a password, so $SHOAL_STORE keeps it off command lines.
StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="SHOAL_STORE",
        help="postgresql://... (servers sharing one database) [the SQLite file in STATE_DIR]",
        show_envvar=True,
    ),
]


@app.command()
def serve(
    repo: Annotated[str, typer.Option("--repo", help="config repository URL or path")],
    state_dir: Annotated[Path, typer.Option("--state-dir", help="the server's own state")],
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT")] = "127.0.0.1:8080",
    poll: Annotated[float, typer.Option("--poll", min=1.0, help="seconds between polls")] = 60.0,
    key: Annotated[
        Path | None,
        typer.Option("--key", envvar="SHOAL_SSH_KEY", help="SSH key [STATE_DIR/id_ed25519]"),
    ] = None,
    branch: Annotated[str, typer.Option("--branch", help="the watched branch")] = "main",
    webhook_secret_file: Annotated[
        Path | None,
        typer.Option("--webhook-secret-file", help="else $SHOAL_WEBHOOK_SECRET[_FILE]"),
    ] = None,
    become_password_file: BecomePasswordFileOption = None,
    notify: Annotated[
        Path | None,
        typer.Option("--notify", envvar="SHOAL_NOTIFY_FILE",
                     help="receivers of outgoing notifications (TOML)"),
    ] = None,
    store: StoreOption = None,
) -> None:
    """Watch the repository, plan, serve the API, apply approved plans."""
    from reconciler.cli.serve import run_serve
    from reconciler.server.notify_settings import (
        NotifySettings,
        NotifySettingsError,
        load_notify_settings,
    )
    from reconciler.server.settings import ServerSettings, load_webhook_secret, parse_listen

    try:
        receivers = load_notify_settings(notify) if notify else NotifySettings()
    except NotifySettingsError as exc:
        typer.echo(f"shoal serve: {exc}", err=True)
        raise typer.Exit(2) from None
    host, port = parse_listen(listen)
    settings = ServerSettings(
        repo=repo,
        state_dir=state_dir,
        branch=branch,
        listen_host=host,
        listen_port=port,
        poll_interval=poll,
        client_key=key.expanduser() if key else None,
        webhook_secret=load_webhook_secret(webhook_secret_file),
        become_password=become_password(become_password_file),
        notify=receivers,
        store_url=store,
    )
    raise typer.Exit(run_serve(settings))


token_app = typer.Typer(no_args_is_help=True)
app.add_typer(token_app, name="token", help="API tokens (stored hashed in the state dir).")


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option("--role", help="viewer | approver | admin")],
    state_dir: Annotated[Path, typer.Option("--state-dir", help="the server's state dir")],
    name: Annotated[str, typer.Option("--name", help="a label for the audit log")] = "",
    store: StoreOption = None,
) -> None:
    """Create a token and print it once; only its hash is kept."""
    from reconciler.cli.serve import create_token
    from reconciler.server.store.records import ROLES

    if role not in ROLES:
        raise typer.BadParameter(f"one of {', '.join(ROLES)}", param_hint="--role")
    with store_errors():
        typer.echo(create_token(state_dir, role, name, store))


ClusterArgument = Annotated[str, typer.Argument(help="a cluster of the repository")]
StateDirOption = Annotated[Path, typer.Option("--state-dir", help="the server's state dir")]
ByOption = Annotated[str | None, typer.Option("--by", help="who, for the audit log")]


@app.command()
def lock(
    cluster: ClusterArgument,
    reason: Annotated[str, typer.Option("--reason", help="why nothing may apply")],
    state_dir: StateDirOption,
    by: ByOption = None,
    store: StoreOption = None,
) -> None:
    """Lock a cluster: no plan of it applies (approved plans wait) until it is unlocked."""
    from reconciler.cli.lock import run_lock

    with store_errors():
        status = run_lock(state_dir, cluster, reason, by, typer.echo, store)
    raise typer.Exit(status)


@app.command()
def unlock(
    cluster: ClusterArgument, state_dir: StateDirOption, by: ByOption = None,
    store: StoreOption = None,
) -> None:  # fmt: skip
    """Lift a cluster's lock; an approved plan starts at the server's next pass."""
    from reconciler.cli.lock import run_unlock

    with store_errors():
        status = run_unlock(state_dir, cluster, by, typer.echo, store)
    raise typer.Exit(status)


@app.command("override-freeze")
def override_freeze(
    plan_id: Annotated[str, typer.Argument(help="the plan to let through")],
    reason: Annotated[str, typer.Option("--reason", help="why it may start during a freeze")],
    state_dir: StateDirOption,
    by: ByOption = None,
    store: StoreOption = None,
) -> None:
    """Let one pending or approved plan start although a freeze window forbids applies now."""
    from reconciler.cli.lock import run_override

    with store_errors():
        status = run_override(state_dir, plan_id, reason, by, typer.echo, store)
    raise typer.Exit(status)


@app.command()
def plan(
    repo: RepoArgument = Path("."),
    key: KeyOption = DEFAULT_KEY,
    as_json: JsonOption = False,
    states: Annotated[bool, typer.Option("--states", help="also show the low states")] = False,
    become_password_file: BecomePasswordFileOption = None,
) -> None:
    """Gather facts and show what would change, per host (exit 0 in sync, 2 changes, 1 error)."""
    from reconciler.cli.plan import run_plan

    raise typer.Exit(
        run_plan(
            repo,
            client_key=key.expanduser(),
            become_password=become_password(become_password_file),
            as_json=as_json,
            show_states=states,
        )
    )


@app.command()
def apply(
    repo: RepoArgument = Path("."),
    key: KeyOption = DEFAULT_KEY,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="apply without asking")] = False,
    as_json: JsonOption = False,
    become_password_file: BecomePasswordFileOption = None,
) -> None:
    """Plan, show, ask, apply with rollback (exit 0 ok, 1 rolled back, 2 refused, 3 unproven)."""
    from reconciler.cli.apply import run_apply

    password = become_password(become_password_file)
    raise typer.Exit(
        run_apply(
            repo, client_key=key.expanduser(), become_password=password, yes=yes, as_json=as_json
        )
    )


@app.command()
def sudoers(
    repo: RepoArgument = Path("."),
    host: Annotated[str | None, typer.Option("--host", help="only this host's login")] = None,
    password_required: Annotated[
        bool,
        typer.Option("--password-required", help="sudo asks for the login's password"),
    ] = False,
) -> None:
    """Print the root script that installs shoal's sudo wrapper and sudoers file on hosts with
    become = "sudo" (run it once per host, e.g. `| ssh HOST sudo sh`)."""
    from reconciler.cli.sudoers import run_sudoers

    raise typer.Exit(
        run_sudoers(
            repo,
            host=host,
            nopasswd=not password_required,
            echo=typer.echo,
            error=lambda message: typer.echo(f"error: {message}", err=True),
        )
    )


def main() -> None:
    app()
