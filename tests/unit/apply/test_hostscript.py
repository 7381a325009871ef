"""The host scripts' parts that run without a lab: what a phase snapshots, the snapshot itself
run read-only on this machine, the log parser, the snapshot comparison, batching. The whole
scripts run on real hosts in tests/lab."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.apply.followup_scripts import (
    build_confirm_script,
    build_recover_script,
    build_rollback_script,
)
from reconciler.apply.host_phase import HostPhase, phase_dir
from reconciler.apply.phase_script import build_phase_script
from reconciler.apply.phaselog import Section, compare_sections, parse_log
from reconciler.apply.rollout import batches
from reconciler.apply.snapshot_targets import needs_lockout, snapshot_targets
from reconciler.facts.parsers.ip_addr import parse_ip_addr
from reconciler.plan.steps import DrainWait, FileWrite, Phase, Step

NONCE = "0123456789abcdef"


def _step(i: int, subsystem: str, commands: list[tuple[str, ...]], **kw: object) -> Step:
    return Step.model_validate(
        {
            "id": f"h/s{i}/a",
            "host": "h",
            "state_id": f"s{i}",
            "function": "x.y",
            "subsystem": subsystem,
            "phase": Phase.REAL_SERVERS_PREPARE,
            "description": f"step {i}",
            "commands": commands,
            **kw,
        }
    )


STEPS = (
    _step(0, "sysctl", [("sysctl", "-w", "net.ipv4.conf.all.arp_ignore=1")],
          undo=[("sysctl", "-w", "net.ipv4.conf.all.arp_ignore=0")]),
    _step(1, "addr", [("ip", "addr", "add", "10.0.0.100/32", "dev", "lo")]),
    _step(2, "iptables", [("iptables", "-t", "nat", "-A", "PREROUTING", "-j", "RETURN")]),
    _step(3, "file", [], writes=[FileWrite(path="/etc/sysctl.d/90-x.conf",
                                           content="net.ipv4.conf.eth0.arp_announce = 2\n")]),
    _step(4, "ipvs", [("ipvsadm", "-e", "-t", "10.0.0.100:80", "-r", "10.0.0.21", "-w", "0")],
          drain=DrainWait(service="tcp 10.0.0.100:80", real_server="10.0.0.21:80", timeout=3)),
)  # fmt: skip


def test_targets_cover_every_touched_subsystem() -> None:
    t = snapshot_targets(STEPS)
    assert t.sysctls == ("net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.eth0.arp_announce")
    assert t.interfaces == ("lo",)
    assert t.iptables_tables == ("nat",)
    assert t.ipvs and not t.arptables
    assert t.files == ("/etc/sysctl.d/90-x.conf",)
    assert needs_lockout(STEPS)
    assert not needs_lockout([STEPS[4]])


SNAPSHOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
# lib.sh and snapshot.sh as the phase script installs them: `printf '%s' <quoted> >"$B/<name>"`.
_INSTALL_RE = re.compile(r"printf '%s' ((?:'[^']*'|\"'\")+) >\"\$B/([a-z]+\.sh)\"")


def _installed(script: str) -> dict[str, str]:
    return {name: "".join(shlex.split(body)) for body, name in _INSTALL_RE.findall(script)}


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory `nobody` can read and write, for a snapshot taken without privileges."""
    d = Path(tempfile.mkdtemp(prefix="shoal-snapshot-"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d)


@pytest.mark.skipif(
    shutil.which("ip", path=SNAPSHOT_ENV["PATH"]) is None
    or shutil.which("sysctl", path=SNAPSHOT_ENV["PATH"]) is None,
    reason="needs ip and sysctl on this machine",
)
def test_the_phase_snapshot_reads_what_the_machine_has(world_dir: Path) -> None:
    """The snapshot part of a real phase script, run read-only under /bin/sh (as `nobody` when
    the tests run as root): phaselog must read from its output what this machine really has."""
    files = world_dir / "files"
    files.mkdir(mode=0o755)
    conf = files / "app.conf"
    conf.write_bytes(b"old content\n\x01 no newline at end")
    conf.chmod(0o604)
    (files / "link").symlink_to("app.conf")
    steps = (
        _step(0, "sysctl", [("sysctl", "-w", "net.ipv4.conf.all.arp_ignore=1"),
                            ("sysctl", "-w", "net.ipv4.conf.shoal0.arp_ignore=1")]),
        _step(1, "addr", [("ip", "addr", "add", "10.0.0.100/32", "dev", "lo")]),
        _step(2, "file", [("rm", "-f", f"{files}/gone", f"{files}/link")],
              writes=[FileWrite(path=str(conf), content="new\n", mode="0600")]),
    )  # fmt: skip
    hp = HostPhase("p1", Phase.REAL_SERVERS_PREPARE, "h", steps, NONCE)
    installed = _installed(build_phase_script(hp))
    assert set(installed) == {"lib.sh", "snapshot.sh", "restore.sh", "lockout.sh", "phase.sh"}
    b = world_dir / "b"
    b.mkdir()
    b.chmod(0o777)
    for name in ("lib.sh", "snapshot.sh"):
        # Moved out of /var/lib/shoal: nothing on this machine outside the test's directory.
        (b / name).write_text(installed[name].replace(hp.dir, str(b)))
    as_nobody = (
        {"user": "nobody", "group": "nogroup", "extra_groups": []} if os.geteuid() == 0 else {}
    )
    run = subprocess.run(
        ["/bin/sh", str(b / "snapshot.sh"), "pre"],
        capture_output=True, text=True, env=SNAPSHOT_ENV, cwd=b, timeout=30, check=True,
        **as_nobody,  # type: ignore[call-overload]
    )  # fmt: skip
    log = parse_log(f"@@shoal-run {NONCE}\n{run.stdout}")
    assert log.stray == "" and run.stderr == ""
    assert tuple(log.pre) == hp.targets.section_names()
    assert {name: s.rc for name, s in log.pre.items() if s.rc} == {}

    arp_ignore = Path("/proc/sys/net/ipv4/conf/all/arp_ignore").read_text().strip()
    assert log.pre["sysctl"].content == (
        f"net.ipv4.conf.all.arp_ignore={arp_ignore}\nnet.ipv4.conf.shoal0.arp_ignore!unreadable\n"
    )
    (lo,) = parse_ip_addr(log.pre["addr.0"].content)
    assert lo.name == "lo" and "127.0.0.1" in {a.address for a in lo.addresses}
    now = subprocess.run(["ip", "-j", "addr", "show", "dev", "lo"], capture_output=True,
                         text=True, env=SNAPSHOT_ENV, check=True).stdout  # fmt: skip
    same = compare_sections({"addr.0": log.pre["addr.0"]}, {"addr.0": Section("addr.0", 0, now)})
    assert same == []

    index = {path: k for k, path in enumerate(hp.targets.files)}
    digest = hashlib.sha256(conf.read_bytes()).hexdigest()
    assert log.pre[f"file.{index[str(conf)]}"].content == f"present 604 {digest}\n"
    assert log.pre[f"file.{index[f'{files}/gone']}"].content == "absent\n"
    assert log.pre[f"file.{index[f'{files}/link']}"].content == "link app.conf\n"
    # What restore.sh would put back: the file byte for byte with its mode, and the link.
    kept = b / "pre" / f"file.{index[str(conf)]}"
    assert kept.read_bytes() == conf.read_bytes() and kept.stat().st_mode & 0o777 == 0o604
    assert (b / "pre" / f"file.{index[f'{files}/link']}.link").read_text() == "app.conf\n"
    # Read-only: the machine's side is as it was.
    assert conf.read_bytes() == b"old content\n\x01 no newline at end"
    assert os.readlink(files / "link") == "app.conf"
    assert sorted(p.name for p in files.iterdir()) == ["app.conf", "link"]


@pytest.mark.parametrize("lockout", [None, 5])
def test_every_script_parses_as_sh(lockout: int | None) -> None:
    """Only a syntax check, as an extra to the run above and the lab tests."""
    hp = HostPhase("p1", Phase.REAL_SERVERS_PREPARE, "h", STEPS, NONCE, 3, lockout)
    scripts = [
        build_phase_script(hp),
        *_installed(build_phase_script(hp)).values(),
        build_confirm_script("p1", hp.phase),
        build_rollback_script("p1", hp.phase),
        build_recover_script("p1", hp.phase),
    ]
    for script in scripts:
        subprocess.run(["/bin/sh", "-n"], input=script, text=True, check=True)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        phase_dir("../etc", Phase.EXTRA)
    with pytest.raises(ValueError):
        HostPhase("p1", Phase.EXTRA, "h", STEPS, "NOT-HEX")
    bad_mode = _step(0, "file", [], writes=[FileWrite(path="/x", content="", mode="u+x")])
    with pytest.raises(ValueError):
        build_phase_script(HostPhase("p1", Phase.EXTRA, "h", (bad_mode,), NONCE))


def test_parse_log_sections_steps_and_rollback() -> None:
    m = f"@@shoal {NONCE}"
    text = (
        f"@@shoal-run {NONCE}\n{m} phase-begin 1.0\n"
        f"{m} begin pre.sysctl\nnet.ipv4.conf.all.arp_ignore=0\n\n{m} end pre.sysctl 0\n"
        f"{m} step-begin 0 1.5\n{m} begin c.0.0\nno newline at end\n{m} end c.0.0 0\n"
        f"{m} step-end 0 0 2.0\n{m} step-begin 1 2.0\n"
        # A command printing a fake marker with another nonce is only output.
        f"{m} begin c.1.0\n@@shoal deadbeef step-end 1 0 3\n\n{m} end c.1.0 2\n"
        f"{m} step-end 1 2 2.5\n{m} phase-end failed 1 2\n"
        f"{m} rollback-begin phase\n{m} begin u.0.0\n\n{m} end u.0.0 0\n"
        f"{m} restore-file 0 0\n{m} rollback-end\n"
        f"{m} begin post.sysctl\nnet.ipv4.conf.all.arp_ignore=0\n\n{m} end post.sysctl 0\n"
        "sh: stray error\n"
    )
    log = parse_log(text)
    assert log.pre["sysctl"].content == "net.ipv4.conf.all.arp_ignore=0\n"
    assert log.steps[0].commands[0].output == "no newline at end"
    assert log.steps[0].duration == pytest.approx(0.5)
    assert log.steps[1].commands[0].rc == 2
    assert log.steps[1].commands[0].output.startswith("@@shoal deadbeef")
    assert (log.end, log.failed_step, log.failed_rc) == ("failed", 1, 2)
    assert log.rolled_back and log.rollback is not None and log.rollback.by == "phase"
    assert log.rollback.files == [(0, 0)]
    assert compare_sections(log.pre, log.post) == []
    assert log.stray == "sh: stray error\n"


def test_compare_ignores_timestamps_counters_lifetimes_only() -> None:
    save = "# Generated by iptables-save on {t}\n*nat\n:PREROUTING ACCEPT [{c}:0]\nCOMMIT\n"
    before = {"iptables_nat": Section("iptables_nat", 0, save.format(t="Mon", c=1))}
    after = {"iptables_nat": Section("iptables_nat", 0, save.format(t="Tue", c=99))}
    assert compare_sections(before, after) == []
    addr = '[{"addr_info":[{"local":"%s","valid_life_time":%d}]}]'
    b = {"addr.0": Section("addr.0", 0, addr % ("10.0.0.1", 100))}
    a = {"addr.0": Section("addr.0", 0, addr % ("10.0.0.1", 50))}
    assert compare_sections(b, a) == []
    a2 = {"addr.0": Section("addr.0", 0, addr % ("10.0.0.2", 50))}
    (diff,) = compare_sections(b, a2)
    assert diff.startswith("addr.0 differs") and "10.0.0.2" in diff


def test_batches() -> None:
    hosts = ["web1", "web2", "web3"]
    assert batches(Phase.REAL_SERVERS_PREPARE, hosts, 2) == [["web1", "web2"], ["web3"]]
    assert batches(Phase.REAL_SERVERS_CLEANUP, hosts, 1) == [["web1"], ["web2"], ["web3"]]
    assert batches(Phase.DIRECTOR_BACKUP, ["lvs2"], 1) == [["lvs2"]]
    assert batches(Phase.EXTRA, [], 1) == []


def test_after_rollback_runs_last_and_only_for_started_steps() -> None:
    conf = _step(0, "file", [], writes=[FileWrite(path="/etc/app.conf", content="new\n")])
    restart = _step(1, "service", [("systemctl", "restart", "app")],
                    after_rollback=[("systemctl", "restart", "app")])  # fmt: skip
    script = build_phase_script(HostPhase("p1", Phase.EXTRA, "h", (conf, restart), NONCE))
    restore = script[script.index("rollback-begin") :]
    # The restart runs again once the old file is back, and only if it had started.
    assert restore.index("restore_file 0 /etc/app.conf") < restore.index("run r.1.0 ")
    assert 'if [ -e "$B/progress/1.started" ]; then\n  run r.1.0 systemctl restart app\nfi' in (
        restore
    )
    m = f"@@shoal {NONCE}"
    log = parse_log(f"@@shoal-run {NONCE}\n{m} rollback-begin phase\n"
                    f"{m} begin r.1.0\nok\n{m} end r.1.0 0\n{m} rollback-end\n")  # fmt: skip
    assert [u.name for u in log.rollbacks[0].undo] == ["r.1.0"]
