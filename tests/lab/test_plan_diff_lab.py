"""The plan's diff of managed files, from content gathered over real SSH on the session lab.

A file.managed file (web1) and keepalived.conf (lvs1) are written by hand with one line other
than the repository's; the facts (one script, one channel per host) carry their content, and
the plan's diff (`shoal plan`'s rendering, the HTTP API's host diff) shows exactly that line.
The hand-written files are removed afterwards: the session lab is shared.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from rich.console import Console

from api.schemas import host_diff
from lab import Lab
from reconciler.cli.common import print_lines
from reconciler.cli.plan import file_diffs, render_plan
from reconciler.desired.loader import load_repository
from reconciler.facts.gather import gather_facts
from reconciler.plan.compile import managed_paths
from reconciler.plan.planner import plan_desired
from reconciler.plan.stepdiff import file_diff
from reconciler.plan.steps import Plan, Step
from reconciler.transport.ssh import SSHTransport
from states.keepalived import CONF_PATH

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = "/etc/shoal-diff-test"
APP_CONF = f"{APP_DIR}/app.conf"
# Lines a careless transport would break (the script's own markers, shell syntax, UTF-8, tab).
PLANNED = "".join(
    [f"key{i} = value {i}\n" for i in range(1, 16)]
    + ["#shoal-facts# end files 0\n", '$(reboot) `id` "quoted" \\n \tcafé\n']
    + [f"key{i} = value {i}\n" for i in range(16, 31)]
)
BY_HAND = PLANNED.replace("key20 = value 20\n", "key20 = edited by hand\n")


def write_repo(lab: Lab, dest: Path) -> Path:
    lab.write_config_repo(ROOT / "fixtures/config-repo", dest)
    cluster = dest / "clusters/web.toml"
    text = cluster.read_text().replace('director = "nftables"', 'director = "keepalived"')
    # A JSON string is a TOML basic string (same escapes), so the content goes in verbatim.
    args = f'{{ path = "{APP_CONF}", content = {json.dumps(PLANNED)}, mode = "0640" }}'
    text += '\n[[state]]\nid = "app-conf"\nfunction = "file.managed"\nhosts = ["web1"]\n'
    text += f"args = {args}\n"
    cluster.write_text(text)
    return dest


async def write_by_hand(lab: Lab, host: str, path: str, content: str, mode: str) -> None:
    await lab.exec(host, ["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat >"$1" && chmod "$2" "$1"',
                          "sh", path, mode], input=content)  # fmt: skip


async def gather_and_plan(lab: Lab, repo: Path) -> tuple[Plan, dict[str, int], float]:
    desired = load_repository(repo)
    hosts = sorted(desired.inventory.hosts)
    async with SSHTransport(desired.inventory, desired.known_hosts, lab.client_key_path,
                            connect_timeout=5) as t:  # fmt: skip
        started = time.monotonic()
        facts = await gather_facts(t, hosts, managed_paths(desired))
        elapsed = time.monotonic() - started
        channels = dict(t.channels_opened)
    return plan_desired(desired, facts), channels, elapsed


def changed_lines(diff: list[str] | None) -> list[str]:
    assert diff is not None
    return [line for line in diff[2:] if line[:1] in "+-"]


def step(plan: Plan, step_id: str) -> Step:
    return next(s for hp in plan.hosts.values() for s in hp.steps if s.id == step_id)


async def test_plan_diff_shows_exactly_the_line_changed_by_hand(lab: Lab, tmp_path: Path) -> None:
    repo = write_repo(lab, tmp_path / "repo")
    fresh, _, _ = await gather_and_plan(lab, repo)
    rendered = step(fresh, "lvs1/keepalived-conf/final/install").change.after
    assert rendered is not None and rendered.count("        weight 2\n") == 1
    # Created from nothing: no before, the diff says the file is absent.
    app = step(fresh, "web1/app-conf/write")
    assert app.change.before is None
    assert (file_diff(app) or [""])[0] == f"--- {APP_CONF} (absent on web1)"

    kept_by_hand = rendered.replace("        weight 2\n", "        weight 1\n")
    try:
        await write_by_hand(lab, "web1", APP_CONF, BY_HAND, "0600")
        await write_by_hand(lab, "lvs1", CONF_PATH, kept_by_hand, "0644")
        plan, channels, elapsed = await gather_and_plan(lab, repo)
    finally:
        await lab.exec("web1", ["rm", "-rf", APP_DIR])
        await lab.exec("lvs1", ["rm", "-f", CONF_PATH])
    # Content comes with the facts: still one script on one channel per host.
    assert set(channels.values()) == {1}, channels

    app = step(plan, "web1/app-conf/write")
    assert app.change.before == BY_HAND and app.change.after == PLANNED
    assert app.description == f"update {APP_CONF} (mode 0600 -> 0640)"
    diff = file_diff(app)
    assert diff is not None
    assert diff[:2] == [f"--- {APP_CONF} (on web1)", f"+++ {APP_CONF} (planned, mode 0640)"]
    assert changed_lines(diff) == ["-key20 = edited by hand", "+key20 = value 20"]

    install = step(plan, "lvs1/keepalived-conf/final/install")
    assert install.change.before == kept_by_hand
    kdiff = file_diff(install)
    assert kdiff is not None
    assert kdiff[:2] == [f"--- {CONF_PATH} (on lvs1)", f"+++ {CONF_PATH} (planned)"]
    assert changed_lines(kdiff) == ["-        weight 1", "+        weight 2"]

    # What an operator sees: `shoal plan` (text and --json) and the HTTP API's host diff.
    buf = io.StringIO()
    print_lines(Console(file=buf, width=200, color_system=None), render_plan(plan))
    text = buf.getvalue()
    assert f"      --- {CONF_PATH} (on lvs1)" in text
    assert "      -        weight 1\n      +        weight 2\n" in text
    assert "      -key20 = edited by hand\n      +key20 = value 20\n" in text
    assert "\n".join(kdiff) == file_diffs(plan)[install.id]
    assert "\n".join(kdiff) in host_diff(plan.hosts["lvs1"])
    print(f"facts of {len(channels)} hosts with file content in {elapsed * 1000:.0f} ms")
    print("\n".join(kdiff))
