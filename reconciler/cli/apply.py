"""`shoal apply [REPO] [--yes] [--json]`: plan, show, ask, apply with progress, report.

The plan is made and shown exactly as `shoal plan` does (reconciler.cli.plan). With --yes the
apply follows at once on the same connections, from the facts the plan was made from: one facts
round trip per host. Otherwise the operator confirms; the apply then gathers facts again and
refuses a plan whose facts moved meanwhile (StalePlan: run it again). Progress is one line per
host and phase on stderr; the per-step results and what was rolled back follow on stdout.

Exit status: 0 applied (or nothing to do), 1 failed and rolled back, 2 refused (not confirmed,
stale plan, --json without --yes, or a host the plan refuses because it breaks an LVS-DR safety
rule: then nothing runs on any host, and the refused one is named), 3 a rollback that could
not be proven (the host differs from its pre-apply facts: look at it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.prompt import Confirm

from reconciler.apply.events import ApplyEvent
from reconciler.apply.executor import apply_plan
from reconciler.apply.runresult import RunResult, StepResult
from reconciler.cli.common import consoles, fail, print_lines
from reconciler.cli.plan import gather_over_ssh, render_plan, summary
from reconciler.cli.verify import render as render_verification
from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.errors import DesiredStateInvalid, RequisiteCycle, ShoalError, StalePlan
from reconciler.facts.gather import gather_facts
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.compile import managed_paths
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import Plan
from reconciler.transport.connect import transport_for
from reconciler.transport.protocol import Transport

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_UNPROVEN = 0, 1, 2, 3
Ask = Callable[[str], bool]


async def make_plan(
    desired: Desired, client_key: Path, become_password: SecretStr | None = None
) -> Plan:
    """Facts of every inventory host (one round trip each), then the plan."""
    facts = await gather_over_ssh(
        desired, client_key, lambda host, facts: None, become_password=become_password
    )
    return plan_desired(desired, facts)


async def gather_and_plan(
    desired: Desired, transport: Transport
) -> tuple[Plan, dict[str, HostFacts]]:
    """`make_plan` on the caller's transport; the facts come back for `apply_plan(facts=)`."""
    paths = managed_paths(desired)
    hosts = sorted(desired.inventory.hosts)
    facts = await gather_facts(transport, hosts, {h: paths.get(h, []) for h in hosts})
    return plan_desired(desired, facts), facts


class ApplyProgress:
    """One progress row per host and phase, fed by the executor's events."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.rows: dict[tuple[str, str], TaskID] = {}

    def __call__(self, event: ApplyEvent) -> None:
        p = self.progress
        if event.kind == "host-start" and event.host and event.phase:
            total = int(event.message.split()[0]) if event.message[:1].isdigit() else None
            self.rows[(event.phase, event.host)] = p.add_task(
                f"{event.phase} {event.host}", total=total, status="running"
            )
        elif event.kind == "step" and event.host and event.phase:
            row = self.rows.get((event.phase, event.host))
            if row is not None and event.ok is not None:
                p.advance(row)
        elif event.kind == "host-done" and event.host and event.phase:
            row = self.rows.get((event.phase, event.host))
            if row is not None:
                p.update(row, status="[green]ok[/]" if event.ok else "[red]failed[/]")
        elif event.kind == "rollback" and event.rollback is not None:
            rb = event.rollback
            state = {True: "[green]proven[/]", False: "[red]NOT PROVEN[/]", None: "pending"}
            p.console.print(
                f"  rolled back {escape(rb.host)} ({escape(rb.phase)}) by {escape(rb.by)}: "
                f"{state[rb.proven]}",
                highlight=False,
            )
        elif event.kind == "wait":
            p.console.print(f"  [yellow]{escape(event.host or '')}: {escape(event.message)}[/]")
        elif event.kind == "verify":
            color = {True: "green", False: "red", None: "cyan"}[event.ok]
            p.console.print(f"  [{color}]{escape(event.message)}[/]", highlight=False)


def render_step_result(r: StepResult) -> str:
    mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]-[/]"}[r.result]
    took = f" [dim]{r.duration:.2f}s[/]" if r.duration is not None else ""
    back = " [yellow](rolled back)[/]" if r.rolled_back else ""
    line = f"  {mark} {escape(r.name)}{took}{back}"
    if r.result is not True:
        line += f"\n      [dim]{escape(r.comment)}[/]"
    if r.result is False and r.output:
        line += "\n" + "\n".join(f"      {escape(x)}" for x in r.output.splitlines()[-12:])
    return line


def render_result(result: RunResult) -> list[str]:
    lines: list[str] = []
    for host, steps in sorted(result.hosts.items()):
        if any(s.result is False for s in steps):
            state = "[red]failed[/]"
        elif any(s.rolled_back for s in steps):
            state = "[yellow]rolled back[/]"
        elif all(s.result is None for s in steps):
            state = "[dim]not run[/]"
        else:
            state = "[green]ok[/]"
        lines.append(f"[bold]{escape(host)}[/] {state}")
        lines += [render_step_result(s) for s in steps]
    for rb in result.rollbacks:
        head = f"rolled back {escape(rb.host)} ({escape(rb.phase)}) by {escape(rb.by)}"
        if rb.proven:
            lines.append(f"[yellow]{head}[/]: equal to its pre-apply facts (proven)")
        elif rb.proven is None:
            lines.append(f"[yellow]{head}[/]: not checked")
            lines += [f"    {escape(d)}" for d in rb.differences]
        else:
            lines.append(f"[bold red]ROLLBACK NOT PROVEN: {head}[/]; the host differs:")
            lines += [f"    {escape(line)}" for d in rb.differences for line in d.splitlines()]
        lines += [f"    [dim]{escape(x)}[/]" for x in rb.restored]
    for err in result.errors:
        where = " ".join(x for x in (err.host, err.phase, err.step_id) if x)
        lines.append(f"[red]{escape(err.kind)}[/] {escape(where)}: {escape(err.message)}")
    if result.verification is not None:
        lines += [escape(line) for line in render_verification(result.verification)]
    verdict = "[green]applied[/]" if result.ok else "[red]FAILED[/]"
    lines.append(f"run of plan {result.plan_id}: {verdict}: {escape(result.comment)}")
    return lines


def exit_status(result: RunResult) -> int:
    if any(rb.proven is False for rb in result.rollbacks):
        return EXIT_UNPROVEN
    return EXIT_OK if result.ok else EXIT_FAILED


def run_apply(
    repo: Path,
    *,
    client_key: Path,
    become_password: SecretStr | None = None,
    yes: bool = False,
    as_json: bool = False,
    console: Console | None = None,
    ask: Ask | None = None,
) -> int:
    """Load, plan, show, confirm, apply, report; return the exit status."""
    out, err = consoles(console)
    try:
        desired = load_repository(repo)
    except DesiredStateInvalid as exc:
        return fail(out, as_json, [str(i) for i in exc.issues], EXIT_FAILED)
    if as_json and not yes:
        return fail(out, as_json, ["--json cannot ask for confirmation: add --yes"], EXIT_REFUSED)

    def show(plan: Plan) -> bool:
        """Print the plan; True if there is something to apply."""
        if not as_json:
            print_lines(out, render_plan(plan))
        # An unread (unreachable or blocked) host has no steps but is not in sync: the apply
        # goes on to say so and fail.
        if plan.empty and not plan.unread:
            status = EXIT_REFUSED if plan.refused else EXIT_OK
            if as_json:
                doc = {"plan": summary(plan), "run": None, "exit_status": status}
                out.print_json(json.dumps(doc))
            else:
                out.print(f"nothing to apply{refused_note(plan)}")
            return False
        return True

    try:
        if yes:
            # No pause between plan and apply: one transport, the plan's facts reused.
            plan, maybe = asyncio.run(
                _plan_and_apply(desired, client_key, become_password, err, as_json, show)
            )
            if maybe is None:
                return EXIT_REFUSED if plan.refused else EXIT_OK
            result = maybe
        else:
            with err.status("gathering facts and planning", spinner="dots"):
                plan = asyncio.run(make_plan(desired, client_key, become_password))
            if not show(plan):
                return EXIT_REFUSED if plan.refused else EXIT_OK
            confirm = ask or (lambda q: Confirm.ask(q, console=out))
            if not confirm(f"Apply plan {plan.id}?"):
                out.print("not applied")
                return EXIT_REFUSED
            # The operator took their time: the apply reads the hosts again (stale check).
            result = asyncio.run(
                _apply(plan, desired, client_key, become_password, err, quiet=as_json)
            )
    except StalePlan as exc:
        return fail(out, as_json, [f"{exc}; run shoal apply again"], EXIT_REFUSED)
    except (RequisiteCycle, DesiredStateInvalid, ShoalError) as exc:
        return fail(out, as_json, [str(exc)], EXIT_FAILED)
    status = exit_status(result)
    if plan.refused and status in (EXIT_OK, EXIT_FAILED):
        status = EXIT_REFUSED
    if as_json:
        doc: dict[str, Any] = {
            "plan": summary(plan),
            "run": result.model_dump(mode="json"),
            "exit_status": status,
        }
        out.print_json(json.dumps(doc, sort_keys=True))
        return status
    print_lines(out, render_result(result))
    if plan.refused:
        out.print(refused_note(plan).lstrip("; "))
    return status


def refused_note(plan: Plan) -> str:
    """What the operator must fix by hand (or allow with `adopt`), if the plan refused a host."""
    if not plan.refused:
        return ""
    hosts = ", ".join(plan.refused)
    return (f"; refused (LVS-DR safety rule broken, see above): {hosts}; fix it by hand or set "
            "adopt = true for the host to let shoal fix it")


async def _plan_and_apply(
    desired: Desired,
    client_key: Path,
    become_password: SecretStr | None,
    err: Console,
    quiet: bool,
    show: Callable[[Plan], bool],
) -> tuple[Plan, RunResult | None]:
    """Gather, plan, show and apply on one transport; (plan, None) when nothing to apply."""
    async with transport_for(desired, client_key, become_password) as transport:
        with err.status("gathering facts and planning", spinner="dots"):
            plan, facts = await gather_and_plan(desired, transport)
        if not show(plan):
            return plan, None
        return plan, await _run(plan, desired, transport, err, quiet=quiet, facts=facts)


async def _apply(
    plan: Plan,
    desired: Desired,
    client_key: Path,
    become_password: SecretStr | None,
    err: Console,
    *,
    quiet: bool,
) -> RunResult:
    async with transport_for(desired, client_key, become_password) as transport:
        return await _run(plan, desired, transport, err, quiet=quiet)


async def _run(
    plan: Plan,
    desired: Desired,
    transport: Transport,
    err: Console,
    *,
    quiet: bool,
    facts: Mapping[str, HostFacts] | None = None,
) -> RunResult:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=err, disable=quiet) as progress:
        return await apply_plan(
            plan,
            desired,
            transport,
            on_event=ApplyProgress(progress),
            check_stale=True,
            facts=facts,
        )
