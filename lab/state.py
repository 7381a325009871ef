"""The lab's record on disk (`<state root>/<lab id>/state.json`) and the machine-wide lab lock.

The record says what `up` created, so `attach`, `status` and `down` can find it from another
process. `down` never trusts it alone: it re-checks every pid and also finds leftovers by name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from lab.naming import STATE_ROOT, lab_dir
from lab.topology import HostKind, Role

STATE_FILE = "state.json"


class HostRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    role: Role
    octet: int
    address: str
    mac: str
    veth: str
    netns: str
    address6: str = ""  # in the lab's ULA /64 ("" in a record written before labs had IPv6)
    holder_pid: int = 0  # `unshare`, in the machine's pid namespace
    init_pid: int = 0  # the host's PID 1, as the machine sees it
    sshd_pid: int = 0
    namespaces: dict[str, int] = {}
    kind: HostKind = "netns"
    qemu_pid: int = 0  # a `vm` host's qemu (its other pids stay 0; `veth` is its tap)

    def main_pid(self) -> int:
        """The process whose marker says the host runs: its init, or a VM's qemu."""
        return self.qemu_pid if self.kind == "vm" else self.init_pid


class LabState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lab_id: str
    subnet: str
    bridge: str
    subnet6: str = ""  # the ULA /64 beside `subnet`
    status: Literal["starting", "up"] = "starting"
    ephemeral: bool = False  # a test lab: removable once its owner process is gone
    owner_pid: int = 0
    owner_start: str = ""
    sshd_debug: bool = False
    hosts: list[HostRecord] = []


def state_path(lab_id: str) -> Path:
    return lab_dir(lab_id) / STATE_FILE


def load_state(lab_id: str) -> LabState | None:
    try:
        text = state_path(lab_id).read_text()
    except FileNotFoundError:
        return None
    return LabState.model_validate_json(text)


def save_state(state: LabState) -> None:
    path = state_path(state.lab_id)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.model_dump(), indent=2) + "\n")
    os.replace(tmp, path)


def all_lab_ids() -> list[str]:
    if not STATE_ROOT.is_dir():
        return []
    return sorted(p.parent.name for p in STATE_ROOT.glob(f"*/{STATE_FILE}"))


def ensure_root() -> None:
    # The root only holds per-lab dirs (0700 each, private keys inside).
    STATE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Serialises subnet allocation and bridge creation between concurrent `up`s."""
    ensure_root()
    with open(STATE_ROOT / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def process_start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat: with the pid, identifies one process over pid reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return ""
    return raw[raw.rfind(")") + 2 :].split()[19]
