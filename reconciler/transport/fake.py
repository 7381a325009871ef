"""`FakeTransport`: a `Transport` whose hosts are functions, for unit tests of decisions.

The executor's batch and rollback policies, recovery and the controller decide on what hosts
answer; a fake lets a test say exactly that (a host unreachable, a phase that fails, a script
that times out) and read back every call in order, in milliseconds and without hosts. Lab tests
cover what a real host does with the same scripts.

A responder gets each `Call` and returns a `CommandResult` (or `Reply`), or raises one of
`reconciler.errors`' transport errors, which the fake passes through as SSHTransport would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from reconciler.errors import HostUnreachable
from reconciler.transport.protocol import SCRIPT_ARGV, Argv, CommandResult

CallKind = Literal["run", "script", "script_fresh"]


@dataclass(frozen=True, slots=True)
class Call:
    """One thing asked of a host: a command (`argv`) or a script (`input`, sent to `sh -s`)."""

    host: str
    kind: CallKind
    argv: Argv
    input: str | None
    timeout: float | None

    @property
    def script(self) -> str:
        """The script (or the command's stdin); empty when there was none."""
        return self.input or ""


@dataclass(frozen=True, slots=True)
class Reply:
    """A shorter way to answer: exit status and output; the fake fills in host and argv."""

    exit_status: int = 0
    stdout: str = ""
    stderr: str = ""


Answer = CommandResult | Reply
Responder = Callable[[Call], Answer | Awaitable[Answer]]


def _unreachable(call: Call) -> Answer:
    raise HostUnreachable(call.host, "no responder for this host in the test")


@dataclass
class FakeTransport:
    """Hosts by name -> responder; `default` answers hosts without their own responder."""

    hosts: dict[str, Responder] = field(default_factory=dict)
    default: Responder = _unreachable
    unreachable: set[str] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    closed: bool = False

    def calls_to(self, host: str) -> list[Call]:
        return [c for c in self.calls if c.host == host]

    async def _answer(self, call: Call) -> CommandResult:
        if self.closed:
            raise RuntimeError("FakeTransport used after aclose()")
        self.calls.append(call)
        # A real transport yields to the loop on every call; so does the fake, so that
        # concurrency (gather over hosts) interleaves as it would.
        await asyncio.sleep(0)
        if call.host in self.unreachable:
            raise HostUnreachable(call.host, "unreachable (FakeTransport)")
        answer = self.hosts.get(call.host, self.default)(call)
        if isinstance(answer, Awaitable):
            answer = await answer
        if isinstance(answer, Reply):
            return CommandResult(
                call.host, call.argv, answer.exit_status, answer.stdout, answer.stderr
            )
        return answer

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
        args = tuple(argv)
        if not args:
            raise ValueError("empty argv")
        result = await self._answer(Call(host_name, "run", args, input, timeout))
        return result.check() if check else result

    async def run_script(
        self, host_name: str, script: str, /, *, timeout: float | None = None
    ) -> CommandResult:
        return await self._answer(Call(host_name, "script", SCRIPT_ARGV, script, timeout))

    async def run_script_fresh(
        self, host_name: str, script: str, /, *, timeout: float | None = None
    ) -> CommandResult:
        return await self._answer(Call(host_name, "script_fresh", SCRIPT_ARGV, script, timeout))

    async def aclose(self) -> None:
        self.closed = True

    async def __aenter__(self) -> FakeTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
