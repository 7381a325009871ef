"""Gathering facts over a `Transport`: the facts script on every host at once, one channel each.

The script is `reconciler.facts.script`'s, its output is read by `reconciler.facts.parse`; this
module owns only the round trip and what a host that cannot answer gets (every fact unknown,
with why).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from reconciler.errors import PrivilegeMissing, ShoalError
from reconciler.facts.hostfacts import HostFacts
from reconciler.facts.parse import parse_facts_output
from reconciler.facts.script import MARKER, build_facts_script
from reconciler.transport.protocol import Transport


async def gather_host_facts(
    transport: Transport, host: str, managed_paths: Sequence[str] = ()
) -> HostFacts:
    """One host's facts; a host that cannot be asked gets every fact unknown, with why."""
    script = build_facts_script(managed_paths)
    try:
        result = await transport.run_script(host, script)
    except PrivilegeMissing as exc:
        # The host answered but sudo ran nothing: every fact unknown, for this reason.
        unknown = HostFacts.all_unknown(host, str(exc))
        return unknown.model_copy(update={"privilege_error": str(exc)})
    except ShoalError as exc:
        return HostFacts.all_unknown(host, f"host unreachable: {exc}")
    if not str(result.stdout).rstrip().endswith(f"{MARKER} done"):
        stderr = str(result.stderr).strip().splitlines()
        why = stderr[-1] if stderr else "no output"
        return HostFacts.all_unknown(
            host, f"facts script exited {result.exit_status} before it finished: {why}"
        )
    return parse_facts_output(host, str(result.stdout))


async def gather_facts(
    transport: Transport,
    hosts: list[str],
    managed_paths: dict[str, list[str]] | None = None,
) -> dict[str, HostFacts]:
    """Facts of every host, gathered concurrently: one script on one SSH channel per host."""
    paths = managed_paths or {}
    results = await asyncio.gather(
        *(gather_host_facts(transport, h, paths.get(h, ())) for h in hosts)
    )
    return dict(zip(hosts, results, strict=True))
