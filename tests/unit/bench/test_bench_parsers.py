"""The bench's pure parsers: sshd log counting, py-spy stacks, tool outputs, host observations."""

from __future__ import annotations

from pathlib import Path

from bench import hoststate
from bench.labrun import ansible_recap, pyinfra_changes
from bench.proc import proc_cpu_seconds
from bench.profile import frame_name, parse_collapsed, summary
from bench.sshlog import (
    LogWindow,
    SshdCounts,
    count_sshd_lines,
    login_problems,
    summarise,
)

# Lines as the lab's sshd (LogLevel VERBOSE, -E file) writes them for one asyncssh connection
# that ran one command and one sftp subsystem.
SSHD_LOG = """\
Server listening on 0.0.0.0 port 22.
Connection from 10.77.3.254 port 34628 on 10.77.3.21 port 22 rdomain ""
Accepted key ED25519 SHA256:WX8L4u1k found at /etc/shoal-lab/authorized_keys:1
Postponed publickey for root from 10.77.3.254 port 34628 ssh2 [preauth]
Accepted publickey for root from 10.77.3.254 port 34628 ssh2: ED25519 SHA256:WX8L4u1k
Starting session: command for root from 10.77.3.254 port 34628 id 0
Close session: user root from 10.77.3.254 port 34628 id 0
Starting session: subsystem 'sftp' for root from 10.77.3.254 port 34628 id 0
Close session: user root from 10.77.3.254 port 34628 id 0
Received disconnect from 10.77.3.254 port 34628:11: Disconnected by application
Connection from 10.77.3.9 port 40000 on 10.77.3.21 port 22 rdomain ""
"""


def test_count_sshd_lines_counts_connections_and_sessions_by_kind() -> None:
    counts = count_sshd_lines(SSHD_LOG)
    assert counts.connections == 2
    assert counts.sessions == 2
    assert counts.kinds == {"command": 1, "subsystem 'sftp'": 1}
    assert counts.logins == {"root": 1}  # not the "Accepted key ... found at" line


def test_login_problems_name_hosts_that_let_in_someone_else_or_no_one() -> None:
    deploy = SSHD_LOG.replace("publickey for root", "publickey for deploy")
    counts = {"web1": count_sshd_lines(deploy), "web2": count_sshd_lines(SSHD_LOG)}
    counts["web3"] = SshdCounts()  # not connected to: nothing to say
    counts["web4"] = SshdCounts(connections=1)  # connected, but no accepted login was read
    assert login_problems(counts, "deploy") == {
        "web2": "let in root",
        "web4": "1 connections, no login as deploy",
    }
    assert login_problems(counts, "root")["web1"] == "let in deploy"
    behind_syslog = "Nov 24 23:13:01 web1 sshd[412]: " + SSHD_LOG.splitlines()[4]
    assert count_sshd_lines(behind_syslog).logins == {"root": 1}


def test_count_sshd_lines_filters_connections_by_client() -> None:
    assert count_sshd_lines(SSHD_LOG, client="10.77.3.254").connections == 1


def test_count_sshd_lines_finds_messages_behind_a_syslog_prefix() -> None:
    line = (
        "Nov 24 23:13:01 web1 sshd[412]: Starting session: shell for root from 1.2.3.4 port 5 id 0"
    )
    assert count_sshd_lines(line).sessions == 1
    assert count_sshd_lines("Close session: user root from 1.2.3.4 port 5 id 0").sessions == 0


def test_log_window_counts_only_what_was_appended(tmp_path: Path) -> None:
    log = tmp_path / "sshd.log"
    log.write_text(SSHD_LOG)
    window = LogWindow({"web1": log, "web2": tmp_path / "missing.log"})
    window.mark()
    with log.open("a") as f:
        f.write('Connection from 10.77.3.254 port 1 on 10.77.3.21 port 22 rdomain ""\n')
        f.write("Starting session: command for root from 10.77.3.254 port 1 id 0\n")
    (tmp_path / "missing.log").write_text("Connection from 10.77.3.254 port 2 on x port 22\n")
    counts = window.read()
    assert counts["web1"] == SshdCounts(1, 1, {"command": 1})
    assert counts["web2"].connections == 1


def test_summarise_reports_min_and_max_and_unseen_hosts_as_zero() -> None:
    per = summarise({"a": SshdCounts(1, 2), "b": SshdCounts(3, 4)}, ["a", "b", "c"])
    assert (per.connections_min, per.connections_max) == (0, 3)
    assert (per.sessions_min, per.sessions_max) == (0, 4)
    assert per.describe() == "0-3 conn, 0-4 ch"
    assert summarise({"a": SshdCounts(1, 1)}, ["a"]).describe() == "1 conn, 1 ch"


def test_frame_name_shortens_paths() -> None:
    frame = "plan_host (/work/main/reconciler/plan/planner.py:130)"
    assert frame_name(frame, "/work/main") == "reconciler/plan/planner.py:plan_host"
    site = "validate_python (/x/.venv/lib/python3.11/site-packages/pydantic/main.py:10)"
    assert frame_name(site) == "pydantic/main.py:validate_python"


def test_parse_collapsed_counts_self_and_total_once_per_stack() -> None:
    text = "\n".join(
        [
            "main (/r/a.py:1);f (/r/a.py:5);f (/r/a.py:5);g (/r/b.py:2) 3",
            "main (/r/a.py:1);f (/r/a.py:5) 1",
            "garbage line",
        ]
    )
    total, stats = parse_collapsed(text, "/r")
    assert total == 4
    by = {s.name: s for s in stats}
    assert by["a.py:f"].total_samples == 4  # recursion counted once per stack
    assert by["a.py:f"].self_samples == 1
    assert by["b.py:g"].self_samples == 3
    assert stats[0].name in ("a.py:main", "a.py:f")
    assert "75.0%  b.py:g" in summary(text, "/r")
    assert summary("") == "no samples"


def test_proc_cpu_seconds_reads_utime_and_stime_after_the_command_name() -> None:
    # comm with spaces and parentheses; utime=150 stime=50 ticks (fields 14 and 15).
    fields = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", "150", "50", "0", "0"]
    line = "1234 (ssh: /x (y) [mux]) " + " ".join(fields)
    import os

    assert proc_cpu_seconds(line) == 200 / os.sysconf("SC_CLK_TCK")


def test_ansible_recap_sums_the_play_recap() -> None:
    out = """
PLAY RECAP *********************************************************************
web1                       : ok=5    changed=2    unreachable=0    failed=0    skipped=1
web2                       : ok=5    changed=0    unreachable=1    failed=0    skipped=1
"""
    assert ansible_recap(out) == (2, 2, 1, 0)
    assert ansible_recap("no recap") == (0, 0, 0, 0)


PYINFRA_DRY = """\
--> Detected changes:
    Operation                                Change   Conditional Change
    sysctl net.ipv4.conf.all.arp_ignore      -        -
    Boot restore script                      2        -
    Enable the unit                          -        1

    Detected changes may not include every change pyinfra will execute.
"""


def test_pyinfra_changes_reads_the_detected_changes_table() -> None:
    assert pyinfra_changes(PYINFRA_DRY) == ["Boot restore script", "Enable the unit"]
    clean = PYINFRA_DRY.replace("      2        -", "      -        -").replace(
        "-        1", "-        -"
    )
    assert pyinfra_changes(clean) == []
    assert pyinfra_changes("nothing") != []


OBSERVED = """\
#sysctl
net.ipv4.conf.all.arp_ignore=1
net.ipv4.conf.all.arp_announce=2
#lo
127.0.0.1/8
10.77.3.100/32
#persisted
# Managed by shoal
net.ipv4.conf.all.arp_ignore = 1
net.ipv4.conf.all.arp_announce=2

#files
/usr/local/sbin/shoal-restore 755 abc
/etc/systemd/system/shoal-restore.service missing
#link
/etc/systemd/system/shoal-restore.service
"""


def test_parse_observed_normalises_the_sysctl_file_format() -> None:
    o = hoststate.parse_observed(OBSERVED)
    assert o.sysctls == (
        ("net.ipv4.conf.all.arp_announce", "2"),
        ("net.ipv4.conf.all.arp_ignore", "1"),
    )
    assert o.persisted == o.sysctls  # "k = v" and "k=v" are the same setting
    assert o.lo_addresses == ("10.77.3.100/32", "127.0.0.1/8")
    assert o.restore == "755 abc"
    assert o.unit == "missing"
    assert o.link == hoststate.RESTORE_UNIT
    other = hoststate.parse_observed(OBSERVED.replace("10.77.3.100/32\n", ""))
    assert hoststate.differences(other, o) == [
        "lo_addresses: got ('127.0.0.1/8',), want ('10.77.3.100/32', '127.0.0.1/8')"
    ]


def test_reset_script_quotes_and_touches_only_the_bench_paths() -> None:
    script = hoststate.reset_script("10.77.3.100")
    assert "ip addr del 10.77.3.100/32 dev lo" in script
    assert "net.ipv4.conf.eth0.arp_announce=0" in script
    assert "rm -rf /var/lib/shoal" in script
    assert "flush" not in script
