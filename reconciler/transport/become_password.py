"""Where the sudo password comes from, for sites whose sudoers asks for one (NOPASSWD is better).

Never from the repository: from a file given to `shoal plan/apply/facts/verify/serve` with
`--become-password-file` (or $SHOAL_BECOME_PASSWORD_FILE), else from $SHOAL_BECOME_PASSWORD. The
variable is taken out of this process's environment as it is read, so no process shoal starts
(git, ssh-keygen, uvicorn workers) inherits it. The file must not be readable by group or others,
as ssh refuses such a private key. The value is a SecretStr: its repr, and so every log line and
record that might show it, is `**********`; only the transport unwraps it, to feed sudo's stdin.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pydantic import SecretStr

PASSWORD_ENV = "SHOAL_BECOME_PASSWORD"
PASSWORD_FILE_ENV = "SHOAL_BECOME_PASSWORD_FILE"


class BecomePasswordError(ValueError):
    """The password file or variable cannot be used; the message names it and why."""


def load_become_password(password_file: Path | None = None) -> SecretStr | None:
    """The sudo password for hosts with become = "sudo", or None when none is given."""
    from_env = os.environ.pop(PASSWORD_FILE_ENV, None)
    path = password_file or (Path(from_env) if from_env else None)
    if path is not None:
        # Given both ways, the file wins: the variable must still not reach a child process.
        os.environ.pop(PASSWORD_ENV, None)
        return SecretStr(_from_file(path))
    value = os.environ.pop(PASSWORD_ENV, None)
    if value is None:
        return None
    return SecretStr(_checked(value, f"${PASSWORD_ENV}"))


def _from_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise BecomePasswordError(f"{path}: cannot read the sudo password: {reason}") from None
    except UnicodeDecodeError:
        raise BecomePasswordError(f"{path}: the sudo password is not UTF-8 text") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BecomePasswordError(
            f"{path}: mode {stat.S_IMODE(mode):04o} lets others read the sudo password; "
            f"chmod 600 {path}"
        )
    # One trailing newline is how editors end a file; spaces may be part of the password.
    return _checked(text.removesuffix("\n").removesuffix("\r"), str(path))


def _checked(value: str, where: str) -> str:
    if not value:
        raise BecomePasswordError(f"{where}: the sudo password is empty")
    if "\n" in value or "\r" in value:
        # sudo -S reads one line: the rest would be read by the wrapper as the marker line.
        raise BecomePasswordError(f"{where}: the sudo password must be one line")
    if "\0" in value:
        raise BecomePasswordError(f"{where}: the sudo password contains a NUL byte")
    return value
