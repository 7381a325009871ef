"""The only place shoal talks to hosts: a pool of asyncssh connections, one per host.

Connections open lazily on a host's first command and are reused; every command is one SSH
session channel. Host keys are checked strictly against the repository's known_hosts: an
unknown or changed key is refused with the presented key's SHA256 fingerprint. Only the
controller's client key is offered (no agent, no passwords, no ~/.ssh/config).

Commands are argv tuples joined with `shlex.join`, so no argument is ever read as shell code.
On a host with `become = "sudo"` the same command or script goes, in the same one channel, to
shoal's wrapper under sudo (`reconciler.transport.become`); a sudo refusal is PrivilegeMissing.
asyncssh and OSError exceptions do not leave this module: they become `reconciler.errors`
classes (HostUnreachable, HostKeyRejected, CommandTimeout, CommandFailed, TransportError).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import math
import os
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pydantic import SecretStr

from reconciler.desired.endpoint import endpoint
from reconciler.desired.models import Host, Inventory
from reconciler.errors import (
    CommandTimeout,
    HostKeyRejected,
    HostUnreachable,
    PrivilegeMissing,
    TransportError,
)
from reconciler.transport import become
from reconciler.transport.protocol import SCRIPT_ARGV, Argv, CommandResult

_find_library = ctypes.util.find_library


def _without_liboqs(name: str) -> str | None:
    return None if name in ("oqs", "liboqs") else _find_library(name)


# asyncssh looks for liboqs when it is imported, with ctypes.util.find_library, which runs
# ldconfig, then gcc and ld, as subprocesses: about 50 ms of every shoal start, and more on a
# loaded machine. liboqs would only add the sntrup761 key exchange; ML-KEM comes from
# cryptography either way. SHOAL_LIBOQS=1 lets asyncssh look for it.
if not os.environ.get("SHOAL_LIBOQS"):
    ctypes.util.find_library = _without_liboqs
try:
    import asyncssh
finally:
    ctypes.util.find_library = _find_library

# After a timeout the channel is closed; waiting longer than this for the close is pointless.
_CLOSE_GRACE = 2.0


def remote_command(argv: Argv, limit: float) -> str:
    """The command line sent to the host: argv, quoted, bounded by the host's own `timeout`.

    sshd ignores SSH "signal" requests in a root session (no privilege separation after login)
    and a closed channel does not stop a command that is not writing, so the host enforces the
    limit itself: coreutils `timeout` kills the command's whole process group just after we give
    up on it. Hosts without `timeout` run the command unbounded.
    """
    joined = shlex.join(argv)
    bound = f"timeout -k 2 {math.ceil(limit) + 1} {joined}"
    return f"if command -v timeout >/dev/null 2>&1; then exec {bound}; else exec {joined}; fi"


@dataclass(frozen=True, slots=True)
class _Command:
    """The command line a channel runs and what its stdin carries."""

    line: str
    stdin: str | None


class _SessionNotOpened(TransportError):
    """The session channel could not be opened: the command never started."""


class _PinnedHostKeys(asyncssh.SSHClient):
    """Records the key a server presented when known_hosts did not already trust it.

    asyncssh consults this only for keys missing from known_hosts; answering False keeps the
    check strict, and the recorded fingerprint goes into the HostKeyRejected message.
    """

    def __init__(self) -> None:
        self.rejected_fingerprint: str | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.rejected_fingerprint = key.get_fingerprint("sha256")
        return False


async def communicate(
    process: asyncssh.SSHClientProcess[str], data: str | None
) -> tuple[str | None, str | None]:
    """`process.communicate(data)`, where a command that exits before it has read all of its
    stdin is not a broken connection: sudo refusing before the wrapper starts, or a wrapper
    that is missing, closes the channel while the script is still being sent. Its exit status
    and stderr (collected once the channel is closed) say what happened."""
    try:
        return await process.communicate(data)
    except BrokenPipeError:
        return await process.communicate()


class SSHTransport:
    """Pooled SSH connections to the inventory's hosts."""

    def __init__(
        self,
        inventory: Inventory,
        known_hosts: Path | str,
        client_key: Path,
        *,
        connect_timeout: float = 10,
        command_timeout: float = 60,
        max_concurrent_hosts: int = 64,
        become_password: SecretStr | None = None,
    ) -> None:
        self._inventory = inventory
        # For hosts with become = "sudo" whose sudoers asks for one; fed to sudo on stdin only.
        self._become_password = become_password
        # A Path is a file to read; a str is the known_hosts text itself (as the repo holds it).
        text = known_hosts.read_text() if isinstance(known_hosts, Path) else known_hosts
        self._known_hosts = asyncssh.import_known_hosts(text)
        self._client_key = asyncssh.read_private_key(str(client_key))
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._semaphore = asyncio.Semaphore(max_concurrent_hosts)
        self._connections: dict[str, asyncssh.SSHClientConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False
        # Observability for tests and benchmarks: how many of each were opened per host.
        self.connections_opened: Counter[str] = Counter()
        self.channels_opened: Counter[str] = Counter()

    async def __aenter__(self) -> SSHTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- connections ----------------------------------------------------------------------

    def _host(self, name: str) -> Host:
        try:
            return self._inventory.hosts[name]
        except KeyError:
            raise TransportError(name, "not in the inventory") from None

    async def _connect(self, name: str) -> asyncssh.SSHClientConnection:
        host = self._host(name)
        client = _PinnedHostKeys()
        self.connections_opened[name] += 1
        try:
            conn, _ = await asyncio.wait_for(
                asyncssh.create_connection(
                    lambda: client,
                    host.address,
                    port=host.port,
                    username=host.user,
                    known_hosts=self._known_hosts,
                    client_keys=[self._client_key],
                    agent_path=None,
                    agent_forwarding=False,
                    password=None,
                    kbdint_auth=False,
                    host_based_auth=False,
                    gss_auth=False,
                    preferred_auth="publickey",
                    config=None,
                    connect_timeout=self.connect_timeout,
                    login_timeout=self.connect_timeout,
                    keepalive_interval=30,
                ),
                # connect_timeout bounds the TCP connect, login_timeout the handshake; this is
                # the backstop for the whole sequence.
                timeout=self.connect_timeout * 2,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyRejected(
                name, client.rejected_fingerprint or "(key type not in known_hosts)", str(exc)
            ) from None
        except asyncssh.PermissionDenied as exc:
            raise HostUnreachable(name, f"login as {host.user} refused: {exc.reason}") from None
        except asyncssh.DisconnectError as exc:
            where = endpoint(host.address, host.port)
            raise HostUnreachable(name, f"ssh to {where}: {exc}") from None
        except TimeoutError:
            raise HostUnreachable(
                name, f"connect to {endpoint(host.address, host.port)} timed out"
            ) from None
        except OSError as exc:
            raise HostUnreachable(
                name, f"connect to {endpoint(host.address, host.port)}: {exc.strerror or exc}"
            ) from None
        return conn

    async def _pooled(self, name: str) -> asyncssh.SSHClientConnection:
        if self._closed:
            raise TransportError(name, "transport is closed")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            conn = self._connections.get(name)
            if conn is None or conn.is_closed():
                conn = await self._connect(name)
                self._connections[name] = conn
            return conn

    def _discard(self, name: str, conn: asyncssh.SSHClientConnection) -> None:
        if self._connections.get(name) is conn:
            del self._connections[name]
        conn.close()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        self._closed = True
        conns = list(self._connections.values())
        self._connections.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            await conn.wait_closed()

    # --- commands ---------------------------------------------------------------------------

    def _command(self, host: Host, argv: Argv, input: str | None, limit: float) -> _Command:
        """What goes over the channel for argv: as is, or (become = "sudo") as a script on the
        wrapper's stdin, under sudo."""
        if host.become == "none":
            return _Command(remote_command(argv, limit), input)
        script = input if argv == SCRIPT_ARGV and input is not None else None
        if script is None:
            script = become.command_script(argv, input)
        password = self._become_password
        sudo = become.sudo_argv(host.become_user, with_password=password is not None)
        return _Command(
            become.login_command(remote_command(sudo, limit)),
            become.sudo_stdin(script, None if password is None else password.get_secret_value()),
        )

    async def _exec(
        self,
        name: str,
        conn: asyncssh.SSHClientConnection,
        argv: Argv,
        input: str | None,
        timeout: float | None,
    ) -> CommandResult:
        limit = self.command_timeout if timeout is None else timeout
        host = self._host(name)
        command = self._command(host, argv, input, limit)
        self.channels_opened[name] += 1
        try:
            process = await conn.create_process(command.line, encoding="utf-8")
        except asyncssh.ChannelOpenError as exc:
            raise _SessionNotOpened(name, f"cannot open a session: {exc.reason}") from None
        except (asyncssh.Error, OSError) as exc:
            raise _SessionNotOpened(name, f"cannot open a session: {exc}") from None
        try:
            stdout, stderr = await asyncio.wait_for(communicate(process, command.stdin), limit)
        except TimeoutError:
            await self._abort(process)
            raise CommandTimeout(name, f"{shlex.join(argv)!r} ran past {limit:g}s") from None
        except asyncssh.Error as exc:
            self._discard(name, conn)
            raise TransportError(name, f"{shlex.join(argv)!r}: {exc}") from None
        except OSError as exc:
            self._discard(name, conn)
            raise HostUnreachable(name, f"{shlex.join(argv)!r}: {exc}") from None
        status = process.exit_status
        if status is None or status < 0:
            # Killed by a signal or the channel closed without a status.
            signal = process.exit_signal[0] if process.exit_signal else "no exit status"
            status = 255
            stderr = f"{stderr or ''}{'' if not stderr else chr(10)}terminated: {signal}"
        result = CommandResult(
            host=name, argv=argv, exit_status=status, stdout=stdout or "", stderr=stderr or ""
        )
        if host.become == "none":
            return result
        try:
            return become.unwrap(result, host.user, host.become_user)
        except PrivilegeMissing:
            if self._become_password is not None or not become.asked_for_password(result):
                raise
        # Only on this failure path: one more channel to tell "no NOPASSWD" from "no rule".
        listing = await self._probe(name, conn, become.list_argv(host.become_user), limit)
        if listing is None:
            raise become.refusal(result, host.user, host.become_user)
        raise become.refusal_after_listing(result, listing, host.user, host.become_user)

    async def _probe(
        self, name: str, conn: asyncssh.SSHClientConnection, argv: Argv, limit: float
    ) -> CommandResult | None:
        """argv's result as the login user, or None if it could not be run to its end."""
        self.channels_opened[name] += 1
        try:
            done = await asyncio.wait_for(
                conn.run(remote_command(argv, limit), stdin=asyncssh.DEVNULL), limit
            )
        except (TimeoutError, asyncssh.Error, OSError):
            return None
        return CommandResult(
            host=name,
            argv=argv,
            exit_status=done.exit_status if done.exit_status is not None else 255,
            stdout=str(done.stdout or ""),
            stderr=str(done.stderr or ""),
        )

    @staticmethod
    async def _abort(process: asyncssh.SSHClientProcess[str]) -> None:
        # Ask sshd to kill the command (honoured for non-root logins only), then close the
        # channel; the host's `timeout` (see remote_command) is what reliably ends it.
        with contextlib.suppress(asyncssh.Error, OSError):
            process.send_signal("KILL")
        process.close()
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(process.wait_closed(), _CLOSE_GRACE)

    async def _run_on(
        self, name: str, argv: Argv, input: str | None, timeout: float | None, *, fresh: bool
    ) -> CommandResult:
        async with self._semaphore:
            if fresh:
                conn = await self._connect(name)
                try:
                    return await self._exec(name, conn, argv, input, timeout)
                finally:
                    conn.close()
            conn = await self._pooled(name)
            try:
                return await self._exec(name, conn, argv, input, timeout)
            except _SessionNotOpened:
                # A pooled connection the host dropped (idle timeout, sshd restart) fails at
                # session open, before the command ran: one retry on a new connection is safe.
                if not conn.is_closed():
                    raise
                self._discard(name, conn)
                conn = await self._pooled(name)
                return await self._exec(name, conn, argv, input, timeout)

    async def run(
        self,
        host_name: str,
        argv: Argv | list[str],
        *,
        input: str | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run one command (argv, quoted for the remote shell) on a pooled connection."""
        args = tuple(argv)
        if not args:
            raise ValueError("empty argv")
        result = await self._run_on(host_name, args, input, timeout, fresh=False)
        return result.check() if check else result

    async def run_script(
        self, host_name: str, script: str, *, timeout: float | None = None
    ) -> CommandResult:
        """Run a POSIX sh script (sent on stdin to `sh -s`) in one channel."""
        return await self._run_on(host_name, SCRIPT_ARGV, script, timeout, fresh=False)

    async def run_script_fresh(
        self, host_name: str, script: str, *, timeout: float | None = None
    ) -> CommandResult:
        """Like run_script, on a new connection (proves the host still accepts new logins)."""
        return await self._run_on(host_name, SCRIPT_ARGV, script, timeout, fresh=True)
