"""An SSH transport to a loaded repository's hosts, set up the way the repository says.

Every command that talks to hosts (plan, apply, facts, verify) and the controller connect alike:
the repository's inventory and pinned host keys, the controller's private key, and the timeouts
and concurrency of `[settings.apply]`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from reconciler.desired.models import Desired
from reconciler.transport.ssh import SSHTransport


def transport_for(
    desired: Desired, client_key: Path, become_password: SecretStr | None = None
) -> SSHTransport:
    """A transport (not yet connected; use `async with`) to `desired`'s inventory; the sudo
    password, if the site needs one, for its hosts with become = "sudo"."""
    cfg = desired.settings.apply
    return SSHTransport(
        desired.inventory,
        desired.known_hosts,
        client_key,
        connect_timeout=cfg.connect_timeout,
        command_timeout=cfg.command_timeout,
        max_concurrent_hosts=cfg.max_concurrent_hosts,
        become_password=become_password,
    )
