"""The real-server states for real: every ARP method applied in a throwaway namespace.

Each case runs tests/lab/netns_apply.py in a new network namespace and a private mount
namespace (tmpfs over the directories shoal writes): the real facts script gathers, the planner
plans, the steps run as argv, and the facts read back must give an empty plan; then the boot
restore script, a simulated reboot, and leaving the cluster (only shoal's objects go, foreign
ones stay). No lab/ hosts needed: root, `ip`, `unshare`, arptables, iptables and nft.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

DRIVER = Path(__file__).with_name("netns_apply.py")
TOOLS = ("ip", "unshare", "arptables", "arptables-save", "iptables", "iptables-save", "nft")


def _need_root() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        msg = f"needs root and {', '.join(missing) or 'root'}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.mark.parametrize("method", ["sysctl", "arptables", "nft-arp", "redirect"])
def test_method_applies_reads_back_in_sync_and_leaves_cleanly(method: str) -> None:
    _need_root()
    ns = f"shoal-st-{method}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        result = subprocess.run(
            ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
             sys.executable, str(DRIVER), method],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    checks = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-2000:])
    names = [c["check"] for c in checks if c.get("ok")]
    assert names == [
        "applied",
        "in sync after apply",
        "foreign objects kept after apply",
        "restore script is idempotent",
        "restore brings the runtime back",
        "left the cluster",
        "in sync after leaving",
        "ledger empty, sysctls restored",
        "foreign objects kept after leaving",
    ]
    left = next(c for c in checks if c["check"] == "left the cluster")["steps"]
    # Reverse order on the way out: the VIP goes before what silenced it.
    first_vip = min((i for i, s in enumerate(left) if "/remove-addr-" in s), default=-1)
    for i, step in enumerate(left):
        if any(k in step for k in ("/remove-arptables-", "/remove-nft-", "/remove-sysctl-")):
            assert first_vip != -1 and first_vip < i
