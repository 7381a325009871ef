"""The one seam between shoal and its hosts: the `Transport` protocol and what a command returns.

Facts, the executor, verification and recovery all talk to hosts through `Transport` and
nothing else; `reconciler.transport.ssh.SSHTransport` is the real one, `FakeTransport`
(`reconciler.transport.fake`) the one unit tests use. A transport raises only the classes of
`reconciler.errors` (HostUnreachable, HostKeyRejected, CommandTimeout, CommandFailed,
TransportError), so callers decide on the error class, never on a library's exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from reconciler.desired.models import Desired
from reconciler.errors import CommandFailed

Argv = tuple[str, ...]

# A script is sent on stdin to `sh -s`, so it never appears in a process listing on the host.
SCRIPT_ARGV: Argv = ("sh", "-s")


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What one remote command did."""

    host: str
    argv: Argv
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def check(self) -> CommandResult:
        """Self if the command succeeded, else CommandFailed."""
        if self.exit_status != 0:
            raise CommandFailed(self.host, self.argv, self.exit_status, self.stderr)
        return self


class Transport(Protocol):
    """Commands and scripts on the inventory's hosts, by host name."""

    async def run(
        self,
        host_name: str,
        argv: Argv | list[str],
        /,
        *,
        input: str | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> CommandResult:
        """One command (argv, quoted for the remote shell); CommandFailed on non-zero if check."""
        ...

    async def run_script(
        self, host_name: str, script: str, /, *, timeout: float | None = None
    ) -> CommandResult:
        """A POSIX sh script in one channel of the host's pooled connection."""
        ...

    async def run_script_fresh(
        self, host_name: str, script: str, /, *, timeout: float | None = None
    ) -> CommandResult:
        """Like run_script, on a new connection: proves the host still accepts new logins."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


# What the server is given to reach a revision's hosts (one transport per pass or run).
TransportFactory = Callable[[Desired], Transport]
