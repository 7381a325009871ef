"""`shoal facts HOST`: gather one host's facts over SSH and print them (rich tables or JSON).

The inventory and the pinned host keys come from the config repository; the controller's
private key from `--key` / SHOAL_SSH_KEY. Exit status: 0 when the host answered (single facts
may still be unknown, shown with the reason), 1 when nothing could be read (unreachable, key
refused), 2 when the repository is invalid or the host is not in its inventory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from reconciler.desired.endpoint import endpoint
from reconciler.desired.loader import load_repository
from reconciler.errors import DesiredStateInvalid
from reconciler.facts.gather import gather_facts
from reconciler.facts.hostfacts import Fact, HostFacts
from reconciler.transport.connect import transport_for


async def facts_of_host(
    repo: Path, host: str, client_key: Path, become_password: SecretStr | None = None
) -> HostFacts:
    """Load the repository and gather `host`'s facts (ValueError if it is not in the inventory)."""
    desired = load_repository(repo)
    if host not in desired.inventory.hosts:
        known = ", ".join(sorted(desired.inventory.hosts)) or "none"
        raise ValueError(f"host {host!r} is not in the inventory (hosts: {known})")
    async with transport_for(desired, client_key, become_password) as transport:
        facts = await gather_facts(transport, [host])
    return facts[host]


def _summary(name: str, fact: Fact[object]) -> str:
    """One line per fact for the table; the full value is in --json."""
    value = fact.value
    if name == "interfaces" and isinstance(value, tuple):
        return "\n".join(
            f"{i.name} {'up' if i.up else 'down'} "
            + " ".join(f"{a.address}/{a.prefix}" for a in i.addresses)
            for i in value
        )
    if name == "sysctls" and isinstance(value, dict):
        keep = (".all.", ".lo.", "ip_forward", ".vs.")
        return "\n".join(f"{k} = {v}" for k, v in value.items() if any(s in k for s in keep))
    if name in ("arptables", "iptables_nat", "ip6tables_nat"):
        backend = getattr(value, "backend", None)
        rules = getattr(value, "rules", ())
        lines = [f"backend {backend}, {len(rules)} rule(s)"]
        lines += [f"{r.chain} {' '.join(r.spec)}" for r in rules]
        return "\n".join(lines)
    if name == "nft":
        tables = getattr(value, "tables", ())
        return (
            "\n".join(
                f"{t.family} {t.name}" + (f'  "{t.comment}"' if t.comment else "") for t in tables
            )
            or "(no tables)"
        )
    if name == "ipvs":
        services = getattr(value, "services", ())
        dests = getattr(value, "destinations", ())
        head = (
            f"available={getattr(value, 'available', None)} loaded={getattr(value, 'loaded', None)}"
        )
        detail = getattr(value, "detail", "")
        lines = [head + (f" ({detail})" if detail else "")]
        for s in services:
            where = f"fwmark {s.fwmark}" if s.fwmark is not None else endpoint(s.address, s.port)
            lines.append(f"{s.protocol} {where} {s.scheduler}")
            for d in dests:
                if d.service_key == s.key:
                    conns = f" conns {d.active_connections}/{d.inactive_connections}"
                    to = endpoint(d.address, d.port)
                    lines.append(f"  -> {to} {d.forward} w={d.weight}{conns}")
        return "\n".join(lines)
    if name == "files" and isinstance(value, dict):
        return "\n".join(
            f"{p} " + (f"{i.mode} {(i.sha256 or i.kind or '')[:12]}" if i.exists else "missing")
            for p, i in value.items()
        )
    if name in ("tools", "services", "services_enabled") and isinstance(value, dict):
        return " ".join(f"{k}{'' if v else ' (no)'}" for k, v in value.items())
    if hasattr(value, "model_dump_json"):
        return str(value.model_dump_json())
    return str(value)


def render_table(facts: HostFacts, console: Console) -> None:
    table = Table(title=f"facts of {facts.host}", show_lines=True)
    table.add_column("fact", style="bold")
    table.add_column("value", overflow="fold")
    for name in facts.fact_names():
        fact = getattr(facts, name)
        if fact.known:
            table.add_row(name, _summary(name, fact))
        else:
            table.add_row(name, f"[red]unknown[/red]: {fact.unknown_reason}")
    console.print(table)
    if facts.privilege_error is not None:
        console.print(f"[red]{facts.privilege_error}[/red]")
    console.print(f"digest {facts.digest()}")


def run_facts(
    repo: Path,
    host: str,
    *,
    client_key: Path,
    become_password: SecretStr | None = None,
    as_json: bool,
    echo: Callable[[str], None],
    console: Console | None = None,
) -> int:
    try:
        facts = asyncio.run(facts_of_host(repo, host, client_key, become_password))
    except DesiredStateInvalid as exc:
        echo(f"invalid repository:\n{exc}")
        return 2
    except (ValueError, OSError) as exc:
        echo(str(exc))
        return 2
    if as_json:
        echo(facts.model_dump_json(indent=2))
    else:
        render_table(facts, console or Console())
    everything_unknown = len(facts.unknown_facts) == len(facts.fact_names())
    return 1 if everything_unknown else 0
