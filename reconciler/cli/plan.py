"""`shoal plan [REPO] [--json] [--states]`: gather facts, plan, print the per-host diff.

Exit status: 0 when every host is in sync, 2 when the plan has changes (or removals it could
not plan, or a host it refuses because it breaks an LVS-DR safety rule), 1 on an error
(invalid repository, requisite cycle, a host that could not be read, or one blocked because a
fact its plan depends on, such as its ledger, could not be read).
Progress goes to stderr, so `--json` leaves stdout to one JSON document.

A step that writes a whole file shows a unified diff of it (`reconciler.plan.stepdiff`), other steps
their before/after lines. `--json` adds those diffs, by step id, next to the plan. File content
comes from the hosts, so control characters are printed escaped, never sent to the terminal.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from reconciler.cli.common import consoles, fail, print_lines
from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.errors import DesiredStateInvalid, RequisiteCycle
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.compile import managed_paths
from reconciler.plan.planner import plan_desired, unreachable_reason
from reconciler.plan.stepdiff import file_diff
from reconciler.plan.steps import Phase, Plan, Step

EXIT_IN_SYNC, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
MAX_DIFF_LINES = 40
# A file's diff holds only the changed lines and their context: it may be longer than a
# before/after, since it is what the operator approves.
MAX_FILE_DIFF_LINES = 200
HostDone = Callable[[str, HostFacts], None]
Gather = Callable[[Desired, HostDone], Awaitable[dict[str, HostFacts]]]

PHASE_TITLES = {
    Phase.PACKAGES: "packages",
    Phase.REAL_SERVERS_PREPARE: "real servers: prepare (ARP suppression, then VIPs)",
    Phase.DIRECTOR_BACKUP: "backup director",
    Phase.DIRECTOR_PRIMARY: "primary director",
    Phase.REAL_SERVERS_CLEANUP: "cleanup (removals, reverse order)",
    Phase.EXTRA: "extra states",
}


async def gather_over_ssh(
    desired: Desired,
    client_key: Path,
    on_host: HostDone,
    *,
    become_password: SecretStr | None = None,
) -> dict[str, HostFacts]:
    """Every inventory host's facts (one script, one channel each), reporting each as it lands."""
    from reconciler.facts.gather import gather_host_facts
    from reconciler.transport.connect import transport_for

    paths = managed_paths(desired)
    async with transport_for(desired, client_key, become_password) as transport:

        async def one(host: str) -> tuple[str, HostFacts]:
            facts = await gather_host_facts(transport, host, paths.get(host, []))
            on_host(host, facts)
            return host, facts

        return dict(await asyncio.gather(*(one(h) for h in sorted(desired.inventory.hosts))))


def exit_status(plan: Plan) -> int:
    if plan.unread:
        return EXIT_ERROR
    if any(hp.steps or hp.skipped or hp.violations for hp in plan.hosts.values()):
        return EXIT_CHANGES
    return EXIT_IN_SYNC


def summary(plan: Plan) -> dict[str, Any]:
    hosts = plan.hosts.values()
    return {
        "plan_id": plan.id,
        "revision": plan.revision,
        "in_sync": exit_status(plan) == EXIT_IN_SYNC,
        "steps": sum(len(hp.steps) for hp in hosts),
        "hosts_changing": sorted(hp.host for hp in hosts if hp.steps),
        "hosts_in_sync": sorted(
            hp.host
            for hp in hosts
            if hp.reachable and not hp.blocked and not hp.steps and not hp.violations
        ),
        "hosts_unreachable": sorted(hp.host for hp in hosts if not hp.reachable),
        "hosts_blocked": {hp.host: hp.blocked for hp in hosts if hp.reachable and hp.blocked},
        "skipped": sum(len(hp.skipped) for hp in hosts),
        "hosts_refused": {h: list(v) for h, v in plan.refused.items()},
        "notes": {hp.host: list(hp.notes) for hp in hosts if hp.notes},
    }


_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _visible(text: str) -> str:
    """`text` safe for a terminal: escape sequences from a host's file are shown, not run."""
    text = _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return escape(text)


def _clip(text: str) -> list[str]:
    lines = text.rstrip("\n").split("\n")
    return _clip_lines(lines, MAX_DIFF_LINES)


def _clip_lines(lines: list[str], limit: int) -> list[str]:
    if len(lines) > limit:
        lines = [*lines[:limit], f"... ({len(lines) - limit} more lines)"]
    return lines


# By a hunk line's first character; the two header lines are told by their place (a removed
# line "-- x" also starts with "---").
_DIFF_STYLES = {"@": "cyan", "-": "red", "+": "green", "\\": "dim"}


def _diff_lines(diff: list[str], limit: int) -> list[str]:
    out = []
    for i, line in enumerate(_clip_lines(diff, limit)):
        style = "bold" if i < 2 else _DIFF_STYLES.get(line[:1])
        out.append(f"      [{style}]{_visible(line)}[/]" if style else f"      {_visible(line)}")
    return out


def render_step(step: Step) -> list[str]:
    """Rich markup lines for one step: what it does, then its change: a unified diff for a
    file it writes, its before/after lines otherwise."""
    out = [f"  [bold]{escape(step.subsystem):<9}[/] {escape(step.description)}  "
           f"[dim]{escape(step.id)}[/]"]  # fmt: skip
    diff = file_diff(step)
    if diff is not None:
        if not diff:
            return [*out, "      [dim](content unchanged)[/]"]
        # A new file is all "+" lines: clipped as an `after` is, so a fresh host stays short.
        new_file = step.change.before is None
        return out + _diff_lines(diff, MAX_DIFF_LINES + 3 if new_file else MAX_FILE_DIFF_LINES)
    if step.change.before is not None:
        out += [f"      [red]- {_visible(line)}[/]" for line in _clip(step.change.before)]
    if step.change.after is not None:
        out += [f"      [green]+ {_visible(line)}[/]" for line in _clip(step.change.after)]
    return out


def file_diffs(plan: Plan) -> dict[str, str]:
    """Step id -> unified diff of every step that changes an existing file (`--json`'s
    "diffs"). A new file's diff would repeat its step's `after`, so it has none."""
    out: dict[str, str] = {}
    for hp in plan.hosts.values():
        for step in hp.steps:
            if step.change.before is None:
                continue
            diff = file_diff(step)
            if diff is not None:
                out[step.id] = "\n".join(diff)
    return out


def render_plan(plan: Plan) -> list[str]:
    lines: list[str] = []
    for host, hp in sorted(plan.hosts.items()):
        if not hp.reachable:
            why = escape(hp.unknown_reason or "")
            lines.append(f"[bold red]{escape(host)}: unreachable[/] ({why})")
            continue
        if hp.blocked:
            lines.append(f"[bold red]blocked: {_visible(hp.blocked)}[/]: nothing is changed on "
                         f"{escape(host)}")  # fmt: skip
            lines += [f"  [magenta]not planned:[/] {escape(s.state_id)}: {_visible(s.reason)}"
                      for s in hp.skipped]  # fmt: skip
            continue
        notes = [f"  [blue]note:[/] {escape(n)}" for n in hp.notes]
        if hp.violations:
            lines.append(f"[bold red]{escape(host)}: refused[/] (breaks an LVS-DR safety rule; "
                         "nothing is applied to it)")  # fmt: skip
            lines += [f"  [red]violation:[/] {escape(v)}" for v in hp.violations]
            lines += notes
            continue
        if not hp.steps and not hp.skipped:
            lines.append(f"[green]{escape(host)}: in sync[/]")
            lines += notes
            continue
        lines.append(f"[bold yellow]{escape(host)}: {len(hp.steps)} step(s)[/]")
        phase: Phase | None = None
        for step in hp.steps:
            if step.phase != phase:
                phase = step.phase
                lines.append(f" [cyan]phase {int(phase)}: {PHASE_TITLES.get(phase, phase.name)}[/]")
            lines += render_step(step)
        lines += [f"  [magenta]not planned:[/] {escape(s.state_id)}: {escape(s.reason)}"
                  for s in hp.skipped]  # fmt: skip
        lines += notes
    s = summary(plan)
    verdict = "[green]in sync[/]" if s["in_sync"] else f"[yellow]{s['steps']} step(s)[/]"
    lines.append(
        f"plan {plan.id} (revision {escape(plan.revision or '-')}): {verdict} on "
        f"{len(s['hosts_changing'])} host(s); {len(s['hosts_in_sync'])} in sync; "
        f"{len(s['hosts_unreachable'])} unreachable; {len(s['hosts_blocked'])} blocked; "
        f"{s['skipped']} not planned"
        + (f"; {len(s['hosts_refused'])} refused" if s["hosts_refused"] else "")
    )
    return lines


def render_states(plan: Plan) -> list[str]:
    lines = []
    for low in sorted(plan.low_states, key=lambda s: (s.host, s.phase)):
        req = [f"{k}={','.join(getattr(low, k))}" for k in ("require", "watch", "onchanges")
               if getattr(low, k)]  # fmt: skip
        args = json.dumps(low.args, sort_keys=True)
        if len(args) > 160:
            args = args[:157] + "..."
        lines.append(
            f"{escape(low.host)} [bold]{escape(low.id)}[/] {escape(low.function)} "
            f"phase={int(low.phase)} {escape(' '.join(req))} [dim]{escape(args)}[/]"
        )
    return lines


def run_plan(
    repo: Path,
    *,
    client_key: Path,
    become_password: SecretStr | None = None,
    as_json: bool = False,
    show_states: bool = False,
    console: Console | None = None,
    gather: Gather | None = None,
) -> int:
    """Load, gather, plan and print; return the exit status. `gather` replaces SSH in tests."""
    out, err = consoles(console)
    try:
        desired = load_repository(repo)
    except DesiredStateInvalid as exc:
        return fail(out, as_json, [str(i) for i in exc.issues], EXIT_ERROR)
    hosts = sorted(desired.inventory.hosts)
    with Progress(TextColumn("gathering facts"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), console=err, transient=True,
                  disable=as_json) as progress:  # fmt: skip
        task = progress.add_task("", total=len(hosts))

        def done(host: str, facts: HostFacts) -> None:
            reason = unreachable_reason(facts)
            if not as_json:
                mark = "[red]unreachable[/]" if reason else "[green]ok[/]"
                progress.console.print(f"  {escape(host)}: {mark}")
            progress.update(task, advance=1, description=host)

        def over_ssh(d: Desired, cb: HostDone) -> Awaitable[dict[str, HostFacts]]:
            return gather_over_ssh(d, client_key, cb, become_password=become_password)

        gatherer: Gather = gather or over_ssh
        facts = asyncio.run(_await(gatherer(desired, done)))
    try:
        plan = plan_desired(desired, facts)
    except (RequisiteCycle, DesiredStateInvalid) as exc:
        return fail(out, as_json, [str(exc)], EXIT_ERROR)
    status = exit_status(plan)
    if as_json:
        doc: dict[str, Any] = {"summary": summary(plan), "exit_status": status}
        doc["plan"] = plan.model_dump(mode="json", exclude=None if show_states else {"low_states"})
        doc["diffs"] = file_diffs(plan)
        out.print_json(json.dumps(doc, sort_keys=True))
        return status
    if show_states:
        print_lines(out, render_states(plan))
    print_lines(out, render_plan(plan))
    return status


async def _await(value: Awaitable[dict[str, HostFacts]]) -> dict[str, HostFacts]:
    return await value
