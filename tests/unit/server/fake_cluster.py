"""A cluster of fake hosts, a config source without git and a clock the test moves (support).

`FakeHost` answers the facts script the way a real host does: with the output the real script
printed on a fresh lab host (fixtures/facts/facts_script/fresh_namespace.txt), section by
section, except what is the host's own: its hostname, its addresses (an `ip -j addr` capture's
lo and eth0, with the host's address and MAC), the sysctls a test set (drift made by hand), and
`missing` for every managed path the script asks about (a fresh host has none of shoal's files).
Any other script (a phase of an apply) is refused with exit 1, so that a run the controller
starts fails there, and the test reads from the calls which scripts came.

`FakeCluster` wires a real `Controller` and a real `Store` to these hosts through
`FakeTransport`, to revisions of the fixture config repository held in directories
(`FakeSource`), and to a `FakeClock`.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import shlex
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.errors import SourceError
from reconciler.facts.parse import Section, split_sections
from reconciler.facts.script import MARKER
from reconciler.server.controller import Controller
from reconciler.server.ownership import Ownership
from reconciler.server.source import CommitInfo
from reconciler.server.store.database import Store
from reconciler.transport.fake import Call, FakeTransport, Reply
from reconciler.transport.protocol import Transport

ROOT = Path(__file__).resolve().parents[3]
CONFIG_REPO = ROOT / "fixtures" / "config-repo"
FRESH_HOST = ROOT / "fixtures" / "facts" / "facts_script" / "fresh_namespace.txt"
IP_ADDR = ROOT / "fixtures" / "facts" / "ip_addr" / "veth_down.txt"
FACTS_HEADER = f"{MARKER} facts v"

ARP_IGNORE = "net.ipv4.conf.all.arp_ignore"


def _captured_sections() -> dict[str, Section]:
    return split_sections(FRESH_HOST.read_text())


def _captured_links() -> tuple[dict[str, Any], dict[str, Any]]:
    """lo and eth0 as `ip -j addr` printed them on a lab host."""
    links = {link["ifname"]: link for link in json.loads(IP_ADDR.read_text())}
    return links["lo"], links["eth0"]


def is_facts_script(call: Call) -> bool:
    """The facts script: the one that prints the facts header (see `build_facts_script`)."""
    return call.kind == "script" and "printf '%s facts v" in call.script


def _asked_files(script: str) -> list[str]:
    for line in script.splitlines():
        if line.startswith("FILES="):
            return shlex.split(line.removeprefix("FILES="))[0].split()
    raise AssertionError("the facts script names no FILES")


@dataclass
class FakeHost:
    name: str
    address: str
    sysctls: dict[str, str] = field(default_factory=dict)
    scripts: list[Call] = field(default_factory=list)

    def facts_output(self, script: str) -> str:
        sections = _captured_sections()
        lo, eth0 = (copy.deepcopy(link) for link in _captured_links())
        mac = hashlib.sha256(self.name.encode()).hexdigest()[:10]
        eth0.update(
            address="02:" + ":".join(mac[i : i + 2] for i in range(0, 10, 2)),
            flags=["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
            operstate="UP",
        )
        eth0.pop("link", None)
        eth0["addr_info"][0]["local"] = self.address
        sysctl = dict(
            line.split("=", 1) for line in sections["sysctl"].stdout.splitlines() if "=" in line
        )
        sysctl.update(self.sysctls)
        own = {
            "hostname": f"{self.name}\n",
            "addr": json.dumps([lo, eth0]) + "\n",
            "sysctl": "".join(f"{k}={v}\n" for k, v in sysctl.items()),
            "files": "".join(f"missing {p}\n" for p in _asked_files(script)),
        }
        out = [f"{FACTS_HEADER}1\n"]
        for name, section in sections.items():
            stdout = own.get(name, section.stdout)
            out.append(
                f"{MARKER} begin {name}\n{stdout}\n"
                f"{MARKER} end {name} {section.exit_status}\n{section.stderr}"
            )
        out.append(f"{MARKER} done\n")
        return "".join(out)

    def answer(self, call: Call) -> Reply:
        if is_facts_script(call):
            return Reply(0, self.facts_output(call.script), "")
        self.scripts.append(call)
        return Reply(1, "", "fake host: nothing is applied here\n")


class FakeSource:
    """Revisions of a config repository as directories; `head` is what `fetch()` reads."""

    def __init__(self) -> None:
        self.trees: dict[str, Path] = {}
        self.head: str | None = None
        self.fetches = 0
        self.failing: SourceError | None = None

    def add(self, tree: Path) -> str:
        sha = hashlib.sha1(f"{len(self.trees)}:{tree}".encode()).hexdigest()
        self.trees[sha] = tree
        self.head = sha
        return sha

    async def fetch(self) -> str:
        self.fetches += 1
        if self.failing is not None:
            raise self.failing
        assert self.head is not None, "push a revision first"
        return self.head

    @asynccontextmanager
    async def checkout(self, sha: str) -> AsyncIterator[Path]:
        yield self.trees[sha]

    async def describe(self, sha: str) -> CommitInfo | None:
        if sha not in self.trees:
            return None
        return CommitInfo(sha=sha, subject=f"tree {self.trees[sha].name}", author="fake", at="")

    def close(self) -> None:
        pass


class FakeClock:
    """Moves only when the loop waits (by the whole timeout, unless a wake is already set).

    After `budget` waits it waits for a real wake instead (`Controller.stop()` sets one), so a
    test can run the loop itself for a given number of sleeps. `on_wait(n)` runs before the
    n-th wait returns (a host comes back, a commit is pushed...).
    """

    def __init__(self, fraction: float = 0.5) -> None:
        self.start = datetime.now(UTC)
        self.elapsed = 0.0
        self.fraction = fraction  # where in [low, high] every random draw lands
        self.waits: list[float] = []
        self.budget = 1_000_000
        self.on_wait: Callable[[int], None] = lambda n: None

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed)

    def monotonic(self) -> float:
        return 1000.0 + self.elapsed

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.fraction

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        self.waits.append(timeout)
        if len(self.waits) > self.budget:
            await event.wait()
            return True
        if not event.is_set():
            self.elapsed += timeout
        self.on_wait(len(self.waits))
        return event.is_set()


Edit = Callable[[Path], None]


def set_in(path: str, old: str, new: str) -> Edit:
    """An edit of one file of the config repository: `old` (once) becomes `new`."""

    def edit(root: Path) -> None:
        target = root / path
        text = target.read_text()
        assert text.count(old) == 1, f"{old!r} in {path}"
        target.write_text(text.replace(old, new))

    return edit


class FakeCluster:
    """The fixture config repository's hosts, all fake; a controller watching them."""

    def __init__(
        self,
        tmp: Path,
        *edits: Edit,
        poll_interval: float = 60.0,
        stores: Callable[[Path], Store] = Store.open,
        ownership: Callable[[Store], Ownership] | None = None,
    ) -> None:
        self.tmp = tmp
        self.source = FakeSource()
        self.clock = FakeClock()
        self.store = stores(tmp / "state")
        self.down: set[str] = set()
        self.transports: list[FakeTransport] = []
        self.transport_error: Exception | None = None
        self.push(*edits)
        inventory = (CONFIG_REPO / "inventory.toml").read_text()
        self.hosts: dict[str, FakeHost] = {}
        for block in inventory.split("[hosts.")[1:]:
            name, _, rest = block.partition("]")
            address = rest.split('address = "', 1)[1].split('"', 1)[0]
            self.hosts[name] = FakeHost(name, address)
        self.controller = Controller(
            source=self.source,
            store=self.store,
            transports=self.transport,
            clock=self.clock,
            poll_interval=poll_interval,
            poll_jitter=0.1,
            ownership=None if ownership is None else ownership(self.store),
        )

    def push(self, *edits: Edit) -> str:
        """A new revision: the fixture repository with `edits`, made the branch head."""
        tree = self.tmp / f"rev{len(self.source.trees)}"
        shutil.copytree(CONFIG_REPO, tree)
        for edit in edits:
            edit(tree)
        return self.source.add(tree)

    def transport(self, _desired: object) -> Transport:
        if self.transport_error is not None:
            raise self.transport_error
        fake = FakeTransport(
            hosts={name: host.answer for name, host in self.hosts.items()},
            unreachable=self.down,
        )
        self.transports.append(fake)
        return fake

    def calls(self) -> list[Call]:
        return [c for t in self.transports for c in t.calls]

    def applied_scripts(self) -> list[Call]:
        """Every script that was not the facts script (phases, rollbacks, confirmations)."""
        return [c for c in self.calls() if not is_facts_script(c)]

    def mark_applied(self, sha: str, cluster: str = "web") -> None:
        """The store says `sha` was applied to `cluster` (as after a successful run)."""
        self.store.update_cluster(cluster, applied_revision=sha, in_sync=True)
