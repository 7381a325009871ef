"""`python -m lab up|down|status`: the lab of real test hosts from the command line."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lab import ops
from lab import vm as vms
from lab.lab import Lab, LabError
from lab.naming import DEMO_LAB_ID
from lab.topology import HostKind

lab_app = typer.Typer(no_args_is_help=True, add_completion=False)
console = Console()
# Failures go to stderr, so that they show even when stdout is the --json document's file.
err_console = Console(stderr=True)

LabId = Annotated[str, typer.Option("--lab-id", help="lab id (1-8 of a-z, 0-9)")]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _print_lab(lab: Lab) -> None:
    table = Table(title=f"lab {lab.lab_id}  {lab.subnet}  bridge {lab.bridge}")
    for col in ("host", "role", "kind", "address", "mac", "init/qemu pid", "sshd pid"):
        table.add_column(col)
    for h in lab.hosts.values():
        # A namespace host's init, or a VM's qemu (its sshd runs in the guest: no pid here).
        pid, sshd = (h.qemu_pid, "-") if h.kind == "vm" else (h.init_pid, str(h.sshd_pid))
        table.add_row(h.name, h.role, h.kind, h.address, h.mac, str(pid), sshd)
    console.print(table)


def _up_failed(why: str) -> NoReturn:
    # Plain text: a VM's boot failure quotes its console, whose brackets are not markup.
    err_console.print(
        Text.assemble(("lab up failed: ", "red"), why), highlight=False, soft_wrap=True
    )
    raise typer.Exit(1)


@lab_app.command()
def up(
    lab_id: LabId = DEMO_LAB_ID,
    real_servers: Annotated[int, typer.Option("--real-servers", min=0, max=123)] = 3,
    sshd_debug: Annotated[bool, typer.Option("--sshd-debug", help="sshd LogLevel DEBUG1")] = False,
    director_kind: Annotated[
        HostKind,
        typer.Option(
            "--director-kind",
            help="netns: namespace hosts on this kernel; vm: qemu VMs with Debian's kernel "
            "(real IPVS, lab/vm.py)",
        ),
    ] = "netns",
    as_json: AsJson = False,
) -> None:
    """Bring a lab up (replacing whatever a previous run of this lab id left)."""
    if director_kind == "vm" and (missing := vms.prerequisites()):
        # Before anything is made: a lab whose VMs cannot boot is not worth starting.
        _up_failed(
            "VM directors (--director-kind vm) need what this machine lacks: "
            f"{'; '.join(missing)}. `make setup` (scripts/setup.sh) installs them."
        )
    what = "VM directors" if director_kind == "vm" else "namespace hosts"
    try:
        with console.status(f"bringing lab {lab_id} up ({what})", spinner="dots"):
            result = ops.up_lab(
                lab_id, real_servers, sshd_debug=sshd_debug, director_kind=director_kind
            )
    except (LabError, ValueError, RuntimeError) as exc:
        _up_failed(str(exc))
    lab = result.lab
    if as_json:
        print(
            json.dumps(
                {
                    "lab_id": lab.lab_id,
                    "subnet": lab.subnet,
                    "controller_address": lab.controller_address,
                    "known_hosts": str(lab.known_hosts_path),
                    "client_key": str(lab.client_key_path),
                    "seconds": round(result.seconds, 2),
                    "hosts": {n: h.model_dump() for n, h in lab.hosts.items()},
                    "inventory_toml": lab.inventory_toml(),
                },
                indent=2,
            )
        )
        return
    _print_lab(lab)
    console.print(f"up in {result.seconds:.2f}s; controller address {lab.controller_address}")
    console.print(f"known_hosts: {lab.known_hosts_path}")
    console.print(f"client key:  {lab.client_key_path}")
    console.print(
        f"try: ssh -i {lab.client_key_path} -o UserKnownHostsFile={lab.known_hosts_path} "
        f"-o StrictHostKeyChecking=yes root@{next(iter(lab.hosts.values())).address} hostname"
    )
    console.rule("inventory.toml")
    console.print(lab.inventory_toml(), markup=False, highlight=False)


@lab_app.command()
def down(lab_id: LabId = DEMO_LAB_ID, as_json: AsJson = False) -> None:
    """Remove a lab: its processes (by verified pid), namespaces, links and state dir."""
    result = ops.down_lab(lab_id)
    r = result.report
    if as_json:
        print(json.dumps({**dataclasses.asdict(r), "seconds": round(result.seconds, 2)}))
    elif not r.found_anything and not r.state_dir_removed:
        console.print(f"lab {lab_id}: nothing to remove")
    else:
        console.print(
            f"lab {lab_id} removed in {result.seconds:.2f}s: {len(r.killed)} processes, "
            f"{len(r.netns_removed)} namespaces, {len(r.links_removed)} links"
        )
    if r.left:
        console.print(f"[red]could not remove:[/] {', '.join(r.left)}")
        raise typer.Exit(1)


@lab_app.command()
def status(lab_id: LabId = DEMO_LAB_ID, as_json: AsJson = False) -> None:
    """Hosts, addresses, pids and reachability of a lab."""
    s = ops.lab_status(lab_id)
    if as_json:
        print(json.dumps(dataclasses.asdict(s), indent=2))
        return
    if not s.exists:
        others = ", ".join(ops.lab_ids()) or "none"
        console.print(f"lab {lab_id} is not up (labs on this machine: {others})")
        if s.leftovers:
            console.print(f"leftovers of a crashed run: {', '.join(s.leftovers)} (`down` removes)")
        raise typer.Exit(1)
    table = Table(title=f"lab {s.lab_id} ({s.status})  {s.subnet}  bridge {s.bridge}")
    for col in ("host", "role", "address", "init pid", "sshd pid", "running", "ssh"):
        table.add_column(col)
    for h in s.hosts:
        table.add_row(
            h.name,
            h.role,
            h.address,
            str(h.init_pid),
            str(h.sshd_pid),
            "yes" if h.running and h.sshd_running else "[red]no[/]",
            "reachable" if h.reachable else "[red]unreachable[/]",
        )
    console.print(table)
    console.print(f"known_hosts: {s.known_hosts}\nclient key:  {s.client_key}")
    if not all(h.running and h.sshd_running and h.reachable for h in s.hosts):
        raise typer.Exit(1)
