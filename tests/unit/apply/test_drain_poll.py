"""The executor's drain poll on a director, run against captured `ipvsadm` output.

In Direct Routing IPVS sees only the client's half of a TCP connection, so a connection the
client has closed stays in InActConn (FIN_WAIT, two minutes): the poll must count only the
connections still opening or open, else every drain after real traffic ends at its timeout.
The script runs under `sh` with a stand-in `ipvsadm` on PATH that prints captured output.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler.apply.drain_poll import drain_poll
from reconciler.facts.script import build_facts_script
from reconciler.plan.steps import DrainWait, Phase, Step
from states.keepalived import PID_DIR

LIST = """IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.77.4.100:80 wlc
  -> 10.77.4.21:80                Route   1      0          3
  -> 10.77.4.22:80                Route   0      {active}          {inactive}
"""
CONNS = """IPVS connection entries
pro expire state       source             virtual            destination
TCP 01:57  FIN_WAIT    10.77.4.31:53820   10.77.4.100:80     10.77.4.22:80
TCP 01:58  FIN_WAIT    10.77.4.31:53822   10.77.4.100:80     10.77.4.22:80
TCP 00:59  {state}    10.77.4.31:53824   10.77.4.100:80     10.77.4.22:80
TCP 00:59  SYN_RECV    10.77.4.31:53830   10.77.4.100:80     10.77.4.21:80
"""


def _poll(tmp_path: Path, active: int, inactive: int, state: str) -> str:
    (tmp_path / "list").write_text(LIST.format(active=active, inactive=inactive))
    (tmp_path / "conns").write_text(CONNS.format(state=state))
    fake = tmp_path / "ipvsadm"
    fake.write_text(
        f'#!/bin/sh\ncase "$*" in *-Lnc*) cat {tmp_path}/conns ;; *) cat {tmp_path}/list ;; esac\n'
    )
    fake.chmod(0o755)
    step = Step(
        id="lvs1/x/drain", host="lvs1", state_id="x", function="ipvs.real_server_absent",
        subsystem="ipvs", phase=Phase.DIRECTOR_PRIMARY, description="drain",
        drain=DrainWait(service="tcp 10.77.4.100:80", real_server="10.77.4.22:80", timeout=0),
    )  # fmt: skip
    script = 'failed=\nmark() { echo "$@"; }\n' + drain_poll(0, step) + "\n"
    out = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, check=True,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
    )  # fmt: skip
    return out.stdout.split()[2]  # `drain 0 <remaining> <seconds>`


def test_only_closing_connections_left_is_drained(tmp_path: Path) -> None:
    assert _poll(tmp_path, 0, 3, "TIME_WAIT") == "0"


def test_an_opening_connection_is_waited_for(tmp_path: Path) -> None:
    assert _poll(tmp_path, 0, 3, "SYN_RECV") == "1"


def test_an_established_connection_is_waited_for(tmp_path: Path) -> None:
    assert _poll(tmp_path, 1, 2, "ESTABLISHED") == "3"


def test_facts_look_for_keepalived_where_shoal_starts_it() -> None:
    assert f"{PID_DIR}/keepalived.pid" in build_facts_script()
