"""LVS-DR real servers, sysctl ARP method, as a pyinfra deploy.

arp_ignore/arp_announce at runtime and in sysctl.d, the VIP as a /32 on lo, and a boot-time
restore script with its unit. Inputs come from peer-vars.json next to the inventory
(PEER_VARS names it).
"""

import json
import os

# pyinfra is installed only in the peers' own venv (bench/peerenv.py), never in the project's
# .venv that mypy checks against, so mypy cannot resolve these imports (pyinfra itself is typed).
from pyinfra import host  # type: ignore[import-not-found]
from pyinfra.facts.server import Command  # type: ignore[import-not-found]
from pyinfra.operations import files, server  # type: ignore[import-not-found]

with open(os.environ["PEER_VARS"]) as f:
    V = json.load(f)

for key, value in V["sysctls"].items():
    server.sysctl(
        name=f"sysctl {key}", key=key, value=value, persist=True, persist_file=V["sysctl_file"]
    )

lo = host.get_fact(Command, "ip -o -4 addr show dev lo")
if f" {V['vip']}/32 " not in (lo or ""):
    server.shell(name="VIP on lo", commands=[f"ip addr add {V['vip']}/32 dev lo"])

files.put(
    name="Boot restore script", src=V["restore_src"], dest=V["restore_path"], mode=V["restore_mode"]
)
files.put(name="Boot restore unit", src=V["unit_src"], dest=V["unit_path"], mode=V["unit_mode"])
files.link(name="Enable the unit", path=V["wants_link"], target=V["unit_path"])
