"""Every name and path a lab creates, all derived from its lab id, so teardown can find them.

Interface names are limited to 15 characters: the bridge is `shoal-<id>` and the bridge-side
end of a host's veth is `sh-<id>-<octet>`, so a lab id has at most 8 characters. Lab ids hold
no '-', which makes `shoal-<id>-` an unambiguous prefix for namespace names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

LAB_ID_RE = re.compile(r"^[a-z0-9]{1,8}$")
DEMO_LAB_ID = "demo"

# Everything a lab keeps on disk: keys, sshd configs and logs, overlay upper dirs, the state
# file. Not under /etc, /var/lib or /run: those are overlaid inside the hosts, and an overlay's
# upper dir must not sit inside its lower dir. Also not world-writable above the lab dir's level.
STATE_ROOT = Path(os.environ.get("SHOAL_LAB_ROOT", "/var/tmp/shoal-lab"))

# Every process the lab starts carries this variable (value `<lab id>/<host>`), which is how
# teardown proves a pid still belongs to the lab before it kills it.
MARKER_ENV = "SHOAL_LAB"


def check_lab_id(lab_id: str) -> str:
    if not LAB_ID_RE.match(lab_id):
        raise ValueError(f"lab id {lab_id!r} must be 1-8 characters of a-z and 0-9")
    return lab_id


def lab_dir(lab_id: str) -> Path:
    return STATE_ROOT / check_lab_id(lab_id)


def bridge_name(lab_id: str) -> str:
    return f"shoal-{lab_id}"


def veth_name(lab_id: str, octet: int) -> str:
    return f"sh-{lab_id}-{octet}"


def veth_re(lab_id: str) -> re.Pattern[str]:
    return re.compile(rf"^sh-{re.escape(lab_id)}-\d{{1,3}}$")


def netns_name(lab_id: str, host: str) -> str:
    return f"shoal-{lab_id}-{host}"


def netns_prefix(lab_id: str) -> str:
    return f"shoal-{lab_id}-"


def marker_value(lab_id: str, host: str) -> str:
    return f"{lab_id}/{host}"


def mac_address(subnet_index: int, octet: int, *, bridge_side: bool = False) -> str:
    """Locally administered, stable per lab and host: a restart gives hosts the same MACs."""
    kind = 0x6D if bridge_side else 0x6C
    return f"02:73:{kind:02x}:{subnet_index:02x}:00:{octet:02x}"
