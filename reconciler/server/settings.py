"""The server's own settings: where the repo and state live, how often to poll, its secrets.

These come from the command line and the environment, never from the config repository: the
SSH key, the webhook secret and the sudo password stay with the server. The secrets are kept out
of `repr` (and the password is a SecretStr) so that they cannot reach a log line by accident.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from reconciler.server.notify_settings import NotifySettings

WEBHOOK_SECRET_ENV = "SHOAL_WEBHOOK_SECRET"
WEBHOOK_SECRET_FILE_ENV = "SHOAL_WEBHOOK_SECRET_FILE"
DEFAULT_POLL_SECONDS = 60.0
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# A working day: a person signs in once in the morning, and a forgotten browser stops working.
DEFAULT_SESSION_SECONDS = 8 * 3600.0


@dataclass(frozen=True)
class ServerSettings:
    repo: str
    state_dir: Path
    branch: str = "main"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    poll_interval: float = DEFAULT_POLL_SECONDS
    # Each wait is poll_interval * (1 ± jitter), so many servers do not poll in step.
    poll_jitter: float = 0.1
    client_key: Path | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # How long a web sign-in lasts (seconds); signing in again starts a new one.
    session_lifetime: float = DEFAULT_SESSION_SECONDS
    # For hosts with become = "sudo" whose sudoers asks for a password (NOPASSWD is better).
    become_password: SecretStr | None = field(default=None, repr=False)
    # Outgoing notifications (`--notify FILE`): receivers, their secrets (kept out of repr).
    notify: NotifySettings = field(default_factory=NotifySettings, repr=False)

    @property
    def key_path(self) -> Path:
        return self.client_key or self.state_dir / "id_ed25519"


def parse_listen(value: str) -> tuple[str, int]:
    """"HOST:PORT" (or "[v6]:PORT") -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def load_webhook_secret(secret_file: Path | None = None) -> str | None:
    """The secret from a file (argument or $SHOAL_WEBHOOK_SECRET_FILE) or $SHOAL_WEBHOOK_SECRET."""
    from_env = os.environ.get(WEBHOOK_SECRET_FILE_ENV)
    path = secret_file or (Path(from_env) if from_env else None)
    if path is not None:
        text = path.read_text(encoding="utf-8").strip()
        return text or None
    return os.environ.get(WEBHOOK_SECRET_ENV) or None
