"""`shoal plan` on the example repository, with facts built from the typed models (no SSH)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from reconciler.cli.main import app
from reconciler.cli.plan import EXIT_CHANGES, EXIT_ERROR, HostDone, run_plan
from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts
from tests.support.gathers import EXAMPLE, fresh


async def unreachable(desired: Desired, done: HostDone) -> dict[str, HostFacts]:
    reason = "host unreachable: timed out"
    out = {h: HostFacts.all_unknown(h, reason) for h in desired.inventory.hosts}
    for host, facts in out.items():
        done(host, facts)
    return out


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, color_system=None), buf


def test_plan_prints_a_per_host_diff_and_exits_2_on_changes() -> None:
    console, buf = _console()
    status = run_plan(EXAMPLE, client_key=Path("/nonexistent"), console=console, gather=fresh)
    text = buf.getvalue()
    assert status == EXIT_CHANGES
    assert "web1: " in text and "phase 20: real servers: prepare" in text
    assert "+ net.ipv4.conf.all.arp_ignore = 1" in text
    assert "- net.ipv4.conf.all.arp_ignore = 0" in text
    assert "web3: in sync" not in text  # web3 is no real server of the example: not planned
    assert text.rstrip().splitlines()[-1].startswith("plan ")


def test_plan_json_and_states() -> None:
    console, buf = _console()
    status = run_plan(EXAMPLE, client_key=Path("/x"), as_json=True, show_states=True,
                      console=console, gather=fresh)  # fmt: skip
    doc = json.loads(buf.getvalue())
    assert status == doc["exit_status"] == EXIT_CHANGES
    assert doc["summary"]["in_sync"] is False
    assert "web1" in doc["summary"]["hosts_changing"]
    assert any(s["function"] == "addr.present" for s in doc["plan"]["low_states"])
    step = doc["plan"]["hosts"]["web1"]["steps"][0]
    assert set(step) >= {"id", "commands", "undo", "phase", "change", "require"}


def test_unreachable_hosts_are_an_error_and_named() -> None:
    console, buf = _console()
    status = run_plan(EXAMPLE, client_key=Path("/x"), console=console, gather=unreachable)
    assert status == EXIT_ERROR
    assert "web1: unreachable (host unreachable: timed out)" in buf.getvalue()


def test_cli_invalid_repository_exits_1() -> None:
    invalid = EXAMPLE.parent / "invalid" / "bad-address"
    result = CliRunner().invoke(app, ["plan", str(invalid)])
    assert result.exit_code == EXIT_ERROR
    assert "is not an IPv4 or IPv6 address" in result.output
