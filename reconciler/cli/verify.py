"""`shoal verify [REPO]`: run the verification phase against the hosts, print what it found.

Exit status 0 when every check passed, 1 when one failed (the failures name the host at fault),
2 when the repository is invalid. `--json` prints the `VerificationResult` for machines.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from reconciler.desired.endpoint import service_endpoint
from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.errors import DesiredStateInvalid
from reconciler.verify.result import VerificationResult
from reconciler.verify.run import verify_desired


async def verify_repository(
    desired: Desired, client_key: Path, become_password: SecretStr | None = None
) -> VerificationResult:
    """Connect to the repository's hosts (pinned keys from its known_hosts) and verify."""
    from reconciler.transport.connect import transport_for

    async with transport_for(desired, client_key, become_password) as transport:
        return await verify_desired(desired, transport)


def render(result: VerificationResult) -> list[str]:
    """The result as lines for a terminal."""
    lines: list[str] = []
    for svc in result.services:
        via = f"via {svc.director}" if svc.director else "no active director"
        lines.append(
            f"{svc.cluster}/{svc.service} {service_endpoint(svc.vip, svc.port, svc.protocol)} "
            f"from {svc.client} "
            f"({via}): {svc.ok}/{svc.requests} ok"
        )
        total = sum(svc.distribution.values()) or 1
        for rs in svc.real_servers:
            got = svc.distribution[rs.host]
            bar = "#" * round(30 * got / total)
            lines.append(f"  {rs.host:<12} weight {rs.weight:<3} {got:>5}  {bar}")
        if svc.forward_packets is not None:
            lines.append(
                f"  director {svc.director}: {svc.forward_packets} packets in, "
                f"{svc.return_packets} replies seen (0 = replies go straight to the client)"
            )
    for arp in result.arp:
        who = ", ".join(f"{r.mac} ({r.host or 'unknown'})" for r in arp.responders) or "nobody"
        asked = "ND" if arp.probe == "nd" else "ARP"
        lines.append(f"{asked} {arp.vip} from {arp.client}: answered by {who}")
        if arp.neighbour_mac:
            lines.append(
                f"  {arp.client} neighbour entry: {arp.neighbour_mac} "
                f"({arp.neighbour_host or 'unknown'})"
            )
    lines.extend(f"note: {n}" for n in result.notes)
    lines.extend(f"FAIL: {f.message}" for f in result.failures)
    lines.append(
        f"verification {'passed' if result.ok else 'FAILED'} in {result.elapsed:.1f}s"
    )
    return lines


def run_verify(
    repo: Path,
    *,
    client_key: Path,
    become_password: SecretStr | None = None,
    as_json: bool,
    echo: Callable[[str], None] = print,
) -> int:
    """Load `repo`, verify its clusters, print through `echo`, return the exit status."""
    try:
        desired = load_repository(repo)
    except DesiredStateInvalid as exc:
        for issue in exc.issues:
            echo(str(issue))
        return 2
    result = asyncio.run(verify_repository(desired, client_key, become_password))
    if as_json:
        data = result.model_dump(mode="json")
        data["distribution"] = result.distribution()
        echo(json.dumps(data, indent=2))
    else:
        for line in render(result):
            echo(line)
    return 0 if result.ok else 1
