"""`shoal validate [REPO]`: load a config repository and print every problem, or a summary.

Exit status 0 means the repository is valid; 1 means it is not (one line per issue, in the
`file:line:col: key path: message` form editors and CI annotate); with `--json` the same result
is one JSON document for machines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.errors import DesiredStateInvalid, issue_dicts


@dataclass(frozen=True, slots=True)
class Summary:
    clusters: int
    services: int
    real_servers: int  # distinct hosts that are a real server somewhere
    hosts: int

    def __str__(self) -> str:
        def count(n: int, word: str) -> str:
            return f"{n} {word}{'' if n == 1 else 's'}"

        return ", ".join(
            (
                count(self.clusters, "cluster"),
                count(self.services, "service"),
                count(self.real_servers, "real server"),
                count(self.hosts, "host"),
            )
        )


def summarize(desired: Desired) -> Summary:
    services = [s for c in desired.clusters.values() for s in c.services]
    real_hosts = {r.host for s in services for r in s.real_servers}
    return Summary(
        clusters=len(desired.clusters),
        services=len(services),
        real_servers=len(real_hosts),
        hosts=len(desired.inventory.hosts),
    )


def run_validate(repo: Path, *, as_json: bool, echo: Callable[[str], None] = print) -> int:
    """Validate `repo`, print the result through `echo`, return the exit status."""
    try:
        desired = load_repository(repo)
    except DesiredStateInvalid as exc:
        if as_json:
            echo(json.dumps({"valid": False, "issues": issue_dicts(exc.issues)}, indent=2))
        else:
            for issue in exc.issues:
                echo(str(issue))
            count = len(exc.issues)
            echo(f"{repo}: {count} problem{'' if count == 1 else 's'}")
        return 1
    summary = summarize(desired)
    if as_json:
        echo(json.dumps({"valid": True, "summary": asdict(summary)}, indent=2))
    else:
        echo(f"{repo}: valid: {summary}")
    return 0
