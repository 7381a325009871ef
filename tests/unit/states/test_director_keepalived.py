"""The keepalived director backend: golden keepalived.conf, `keepalived -t`, and its steps."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.facts.hostfacts import KeepalivedInfo
from reconciler.plan.steps import Phase
from states.keepalived import (
    CONF_PATH,
    has_zero_weight_server,
    sha256_text,
    stop_argv,
    validate_argv,
)
from states.keepalived_conf import render_keepalived_conf
from tests.unit.states.director_fixtures import desired, facts, plan

DATA = Path(__file__).parent / "director_data"
SERVICES = [
    {
        "name": "http", "vip": "10.77.0.100", "port": 80,
        "check": {"type": "http", "path": "/healthz", "expect": 200},
        "real_server": [{"host": "web2", "weight": 2}, {"host": "web1", "weight": 1}],
    },
    {
        "name": "dns", "vip": "10.77.0.101", "port": 53, "protocol": "udp", "scheduler": "rr",
        "persistence": 60, "real_server": [{"host": "web3", "weight": 1}],
    },
    {
        "name": "tls", "vip": "10.77.0.100", "port": 443, "check": {"type": "none"},
        "real_server": [{"host": "web1"}],
    },
]  # fmt: skip
LEAVING = ["tcp 10.77.0.100:80 10.77.0.23:80", "tcp 10.77.0.102:80 10.77.0.24:80"]


def _keepalived() -> str:
    path = shutil.which("keepalived") or (
        "/usr/sbin/keepalived" if Path("/usr/sbin/keepalived").exists() else None
    )
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("keepalived is not installed")
        pytest.skip("keepalived is not installed")
    return path


@pytest.mark.parametrize("host", ["lvs1", "lvs2"])
def test_golden(host: str) -> None:
    text = render_keepalived_conf(desired("keepalived", SERVICES), host)
    assert text == (DATA / f"keepalived-{host}.conf").read_text()
    assert "lb_kind DR" in text and "vrrp_strict" not in text and " dr\n" not in text


def test_golden_drain_variant() -> None:
    text = render_keepalived_conf(desired("keepalived", SERVICES), "lvs1", LEAVING)
    assert text == (DATA / "keepalived-lvs1-drain.conf").read_text()
    assert has_zero_weight_server(text)
    assert not has_zero_weight_server(
        render_keepalived_conf(desired("keepalived", SERVICES), "lvs1")
    )


def test_deterministic_whatever_the_input_order() -> None:
    shuffled = [SERVICES[2], SERVICES[0], SERVICES[1]]
    a = render_keepalived_conf(desired("keepalived", SERVICES), "lvs1", LEAVING)
    b = render_keepalived_conf(desired("keepalived", shuffled), "lvs1", list(reversed(LEAVING)))
    assert a == b


@pytest.mark.parametrize("name", ["keepalived-lvs1.conf", "keepalived-lvs2.conf",
                                  "keepalived-lvs1-drain.conf"])  # fmt: skip
def test_keepalived_accepts_rendered_config(name: str, tmp_path: Path) -> None:
    _keepalived()
    content = (DATA / name).read_text()
    conf = tmp_path / "keepalived.conf"
    conf.write_text(content)
    # The very command the validate step runs on the host.
    res = subprocess.run(validate_argv(str(conf), content), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_zero_weight_validator_still_rejects_errors(tmp_path: Path) -> None:
    _keepalived()
    content = (DATA / "keepalived-lvs1-drain.conf").read_text().replace("lb_kind DR", "lb_kind dr")
    conf = tmp_path / "keepalived.conf"
    conf.write_text(content)
    res = subprocess.run(validate_argv(str(conf), content), capture_output=True, text=True)
    assert res.returncode != 0 and "routing method" in res.stderr


def test_fresh_director_steps() -> None:
    d = desired("keepalived", SERVICES)
    f = {h: facts(h) for h in ("lvs1", "lvs2")}
    lows, steps, skipped = plan(d, f)
    assert skipped == [] and not any(lw.function == "addr.present" for lw in lows)
    lvs2 = [s for s in steps if s.host == "lvs2"]
    assert [s.id.rsplit("/", 1)[1] for s in lvs2] == ["validate", "install", "reload"]
    assert {s.phase for s in lvs2} == {Phase.DIRECTOR_BACKUP}
    assert {s.phase for s in steps if s.host == "lvs1"} == {Phase.DIRECTOR_PRIMARY}
    validate, install, reload = lvs2
    assert validate.writes[0].path == CONF_PATH + ".shoal-new"
    assert validate.writes[0].content == render_keepalived_conf(d, "lvs2")
    assert validate.commands == (("keepalived", "-t", "-f", CONF_PATH + ".shoal-new"),)
    assert install.commands == (("mv", "-f", CONF_PATH + ".shoal-new", CONF_PATH),)
    assert install.undo == (("rm", "-f", CONF_PATH),)  # there was no file before
    assert install.require == (validate.id,) and reload.require == (install.id,)
    assert reload.commands[0][:2] == ("sh", "-c") and reload.commands[0][-2:] == (
        CONF_PATH, "/var/lib/shoal")  # fmt: skip
    ledger = next(lw for lw in lows if lw.id == "keepalived-conf" and lw.host == "lvs2").args[
        "ledger"
    ]
    # What the file would own; a fresh host had none of it, so the state claims all four.
    assert ledger[0]["op"] == "add" and len(ledger[0]["keys"]) == 4


def test_in_sync_is_empty_and_stopped_daemon_is_started() -> None:
    d = desired("keepalived", SERVICES)
    f = {}
    for h in ("lvs1", "lvs2"):
        sha = sha256_text(render_keepalived_conf(d, h))
        f[h] = facts(h, keepalived=KeepalivedInfo(installed=True, config_sha256=sha, running=True))
    assert plan(d, f)[1:] == ([], [])
    f["lvs1"] = facts("lvs1", keepalived=KeepalivedInfo(
        installed=True, config_sha256=sha256_text(render_keepalived_conf(d, "lvs1"))))  # fmt: skip
    _, steps, _ = plan(d, f)
    assert [s.id for s in steps] == ["lvs1/keepalived-conf/start"]


def test_rollback_stops_a_daemon_that_was_not_running() -> None:
    """Starting keepalived is undone by stopping it; reloading a running one is not."""
    d = desired("keepalived", SERVICES)
    old = KeepalivedInfo(installed=True, config_sha256="0" * 64)
    _, stopped, _ = plan(d, {h: facts(h, keepalived=old) for h in ("lvs1", "lvs2")})
    _, install, reload = [s for s in stopped if s.host == "lvs2"]
    assert [u[2] for u in reload.undo] == [stop_argv()[2]]
    # The old file comes back without a reload, which would start the daemon again.
    assert install.undo == (("mv", "-f", CONF_PATH + ".shoal-prev", CONF_PATH),)
    running = old.model_copy(update={"running": True})
    _, live, _ = plan(d, {h: facts(h, keepalived=running) for h in ("lvs1", "lvs2")})
    _, install, reload = [s for s in live if s.host == "lvs2"]
    assert reload.undo == () and install.undo[-1][:2] == ("sh", "-c")
    # A daemon started because it was found stopped is stopped again on rollback.
    synced = KeepalivedInfo(
        installed=True, config_sha256=sha256_text(render_keepalived_conf(d, "lvs1"))
    )
    _, start, _ = plan(d, {"lvs1": facts("lvs1", keepalived=synced),
                           "lvs2": facts("lvs2", keepalived=running)})  # fmt: skip
    assert [s.undo for s in start if s.host == "lvs1"] == [(stop_argv(),)]


def test_leaving_real_server_drains_before_removal() -> None:
    d = desired("keepalived", SERVICES)
    owned = {"keepalived.real_server": ("tcp 10.77.0.100:80 10.77.0.23:80",)}
    info = KeepalivedInfo(installed=True, config_sha256="0" * 64, running=True)
    _, steps, _ = plan(d, {"lvs1": facts("lvs1", keepalived=info, ledger=owned)})
    lvs1 = [s for s in steps if s.host == "lvs1"]
    assert [s.id.split("/", 2)[2] for s in lvs1] == [
        "drain/validate", "drain/install", "drain/reload",
        "drain/tcp 10.77.0.100:80/10.77.0.23:80",
        "final/validate", "final/install", "final/reload",
    ]  # fmt: skip
    drain_conf = lvs1[0].writes[0].content
    assert "real_server 10.77.0.23 80 {\n        weight 0\n    }" in drain_conf
    assert "10.77.0.23 80" not in lvs1[4].writes[0].content
    wait = lvs1[3]
    assert wait.drain is not None and wait.drain.real_server == "10.77.0.23:80"
    assert wait.require == (lvs1[2].id,)
    assert set(lvs1[4].require) == {lvs1[2].id, wait.id}
    # The previous file is kept and restored (then reloaded) on undo.
    assert lvs1[1].commands[0] == ("cp", "-p", CONF_PATH, CONF_PATH + ".shoal-prev")
    assert lvs1[1].undo[0] == ("mv", "-f", CONF_PATH + ".shoal-prev", CONF_PATH)
    # Once the drain config is in place (an earlier, interrupted run), only the final stage runs.
    info = KeepalivedInfo(installed=True, config_sha256=sha256_text(drain_conf), running=True)
    _, steps, _ = plan(d, {"lvs1": facts("lvs1", keepalived=info, ledger=owned)})
    assert [s.id.split("/", 2)[2] for s in steps if s.host == "lvs1"] == [
        "drain/tcp 10.77.0.100:80/10.77.0.23:80",
        "final/validate", "final/install", "final/reload",
    ]  # fmt: skip


def test_unknown_ledger_plans_no_config() -> None:
    d = desired("keepalived", SERVICES)
    _, steps, skipped = plan(d, {"lvs1": facts("lvs1", ledger_unknown="unreadable")})
    assert not [s for s in steps if s.host == "lvs1"]
    assert ["ledger unknown" in s.reason for s in skipped if s.host == "lvs1"] == [True]
