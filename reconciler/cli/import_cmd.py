"""`shoal import` and `shoal export`: a running cluster's files into a repository, and back.

import: exit 0 when the repository was written (and validates), 1 when the sources cannot be
imported as asked (every reason with its file:line; nothing written). Each dropped construct
and each assumption is printed, so nothing disappears without a word.
export: the keepalived.conf shoal's keepalived backend would install on one director.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from reconciler.cli.validate import summarize
from reconciler.desired.loader import load_inventory_file, load_repository
from reconciler.errors import ConfigIssue, DesiredStateInvalid, issue_dicts
from reconciler.importer.hosts_gather import gather_inventory_facts
from reconciler.importer.run import ImportRefused, ImportRequest, run_import
from states.keepalived_conf import render_keepalived_conf


def parse_director_file(spec: str) -> tuple[str | None, Path]:
    """`NAME=FILE` or `FILE` (a keepalived.conf, and the inventory name of its director)."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name:
        return name, Path(path)
    return None, Path(spec)


async def with_host_facts(req: ImportRequest, client_key: Path) -> ImportRequest:
    """`req` with the facts of every host of its --from-hosts inventory (one round trip each)."""
    if req.from_hosts is None:
        return req
    try:
        inventory = load_inventory_file(req.from_hosts)
        known_hosts = req.known_hosts.read_text()
    except DesiredStateInvalid as exc:
        raise ImportRefused(exc.issues) from None
    except OSError as exc:
        raise ImportRefused([ConfigIssue(str(req.known_hosts), f"cannot read: {exc}")]) from None
    try:
        facts = await gather_inventory_facts(inventory, known_hosts, client_key)
    except (OSError, ValueError) as exc:  # the key or known_hosts asyncssh cannot use
        raise ImportRefused([ConfigIssue(str(client_key), f"cannot connect: {exc}")]) from None
    return replace(req, host_facts=facts)


def run_import_cmd(req: ImportRequest, *, as_json: bool, echo: Callable[[str], None],
                   client_key: Path | None = None) -> int:  # fmt: skip
    try:
        if req.from_hosts is not None and req.host_facts is None:
            req = asyncio.run(with_host_facts(req, client_key or Path("~/.ssh/id_ed25519")))
        result = run_import(req)
    except ImportRefused as exc:
        if as_json:
            echo(json.dumps({"written": False, "issues": issue_dicts(exc.issues)}, indent=2))
        else:
            for issue in exc.issues:
                echo(str(issue))
        return 1
    assert result.desired is not None
    if as_json:
        echo(json.dumps({
            "written": True, "target": str(req.target),
            "dropped": [str(d) for d in result.dropped], "notes": result.notes,
            "findings": [str(f) for f in result.findings],
            "clusters": sorted(result.desired.clusters),
        }, indent=2))  # fmt: skip
        return 0
    for note in result.notes:
        echo(f"note: {note}")
    for dropped in result.dropped:
        echo(f"not imported: {dropped}")
    for finding in result.findings:
        echo(f"known-bad pattern: {finding}")
    echo(f"{req.target}: written, valid: {summarize(result.desired)}")
    if result.findings:
        echo("next: `shoal plan`: besides the corrections above, a faithful import changes "
             "nothing; `adopt = true` is set on the hosts whose correction removes hand-made state")
    else:
        echo("next: `shoal plan` against the hosts; a first plan of a faithful import changes "
             "nothing")
    echo("to let shoal own what was imported (remove it later like its own objects), set "
         "`adopt = true` in a cluster file (README: Importing a running cluster)")
    return 0


def run_export(repo: Path, director: str, out: Path | None, echo: Callable[[str], None]) -> int:
    try:
        desired = load_repository(repo)
    except DesiredStateInvalid as exc:
        for issue in exc.issues:
            echo(str(issue))
        return 1
    ours = [c for c in desired.clusters.values() if director in c.cluster.directors]
    if director not in desired.inventory.hosts or not ours:
        echo(f"{director}: not a director of any cluster in {repo}")
        return 1
    text = render_keepalived_conf(desired, director)
    if out is None:
        echo(text.rstrip("\n"))
    else:
        out.write_text(text)
    return 0
