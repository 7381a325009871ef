"""A command that exits before reading all of its stdin (sudo refusing before shoal's wrapper
starts) gives its exit status and stderr, not a broken connection: over a real SSH session to
an asyncssh server on loopback whose command never reads its input."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

from reconciler.transport.ssh import communicate

SCRIPT = "echo never run\n" * 400_000  # far more than the channel's window: the send must block


class _NoAuth(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # the test server lets anyone in: it runs nothing


async def _refuse(process: asyncssh.SSHServerProcess[str]) -> None:
    process.stderr.write("sudo: a password is required\n")
    process.exit(1)


@pytest.mark.asyncio
async def test_an_early_exit_while_the_script_is_sent_keeps_its_status(tmp_path: Path) -> None:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        _NoAuth, "127.0.0.1", 0, server_host_keys=[host_key], process_factory=_refuse,
        encoding="utf-8",
    )  # fmt: skip
    port = server.sockets[0].getsockname()[1]
    try:
        login = asyncssh.connect("127.0.0.1", port, known_hosts=None, username="deploy",
                                 client_keys=None, agent_path=None, config=None)  # fmt: skip
        async with login as conn:
            for _ in range(3):
                process = await conn.create_process("sh -s", encoding="utf-8")
                stdout, stderr = await asyncio.wait_for(communicate(process, SCRIPT), 30)
                assert process.exit_status == 1
                assert stderr == "sudo: a password is required\n" and not stdout
            # The connection is still good for the next command.
            process = await conn.create_process("true", encoding="utf-8")
            await asyncio.wait_for(communicate(process, None), 30)
            assert process.exit_status == 1
    finally:
        server.close()
        await server.wait_closed()
