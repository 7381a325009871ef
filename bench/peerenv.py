"""The peers' own virtual environment (bench/.peers-venv), created with pip, pinned versions.

Never the project's .venv: Ansible and pyinfra bring dependencies of their own. py-spy (the
profiler the bench uses where a target is missed) lives here too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".peers-venv"
# The versions the bench was run with; `ansible` is the community package (it carries the
# ansible.posix collection the playbook's sysctl module comes from) on top of ansible-core.
PINS = (
    "ansible==12.3.0",
    "ansible-core==2.19.14",
    "pyinfra==3.10.0",
    "py-spy==0.4.3",
    "pyinstrument==5.1.3",
)


def bin_path(name: str) -> Path:
    return VENV / "bin" / name


def installed() -> dict[str, str]:
    py = bin_path("python")
    if not py.exists():
        return {}
    out = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True)
    pairs = (line.split("==", 1) for line in out.stdout.splitlines() if "==" in line)
    return {k.lower(): v for k, v in pairs}


def ensure() -> dict[str, str]:
    """Create or update the venv so it holds exactly the pinned versions; return them."""
    have = installed()
    wanted = dict(p.split("==", 1) for p in PINS)
    if all(have.get(k.lower()) == v for k, v in wanted.items()):
        return {k: have[k.lower()] for k in wanted}
    if not bin_path("python").exists():
        print(f"bench: creating {VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print("bench: installing " + " ".join(PINS), file=sys.stderr)
    subprocess.run(
        [
            str(bin_path("python")),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            *PINS,
        ],
        check=True,
    )
    have = installed()
    return {k: have.get(k.lower(), "?") for k in wanted}
