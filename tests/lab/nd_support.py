"""Neighbour Discovery as the lab tests watch it, on any lab host (namespace or VM): rounds of
the verification's own solicitation probe from several hosts at once, what a client hears about
a VIP (nd_listen.py), a host's neighbour entry; and the judgement "one MAC, the director's"."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from lab import Lab
from reconciler.verify.probe_nd import nd_probe_source

LISTENER = (Path(__file__).parent / "nd_listen.py").read_text()


async def wait_for_file(lab: Lab, host: str, path: str, task: asyncio.Future[Any]) -> None:
    """Until `path` exists on `host` (a background program's "I have started"), 60 s at most
    (an emulated VM on a machine with a load of 20 took over 30 s for one probe round)."""
    deadline = time.monotonic() + 60
    while (await lab.exec(host, ["test", "-e", path], check=False)).returncode:
        if task.done():
            ended = task.exception() or task.result()
            raise AssertionError(f"{path} never appeared on {host}: the program ended: {ended!r}")
        assert time.monotonic() < deadline, f"{path} never appeared on {host} in 60 s"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def soliciting(
    lab: Lab, host: str, vip: str, window: float = 0.3
) -> AsyncIterator[list[list[str]]]:
    """Neighbour Solicitation rounds for `vip` from `host`, back to back, for the block.

    Each round is the verification's own probe (two solicitations, a `window` second wait); the
    list yielded is filled, when the block ends, with each round's responders (MACs) in order.
    """
    token = secrets.token_hex(4)
    src, stop, ready = (f"/tmp/shoal-ndw-{token}.{x}" for x in ("py", "stop", "ready"))
    await lab.exec(host, ["sh", "-c", f"cat >{src}"], input=nd_probe_source())
    loop = (f"while [ ! -e {stop} ]; do python3 {src} --iface eth0 --vip {vip} --count 2 "
            f"--interval 0.05 --window {window} || exit $?; echo; touch {ready}; done")  # fmt: skip
    task = asyncio.ensure_future(lab.exec(host, ["sh", "-c", loop], timeout=600))
    rounds: list[list[str]] = []
    try:
        await wait_for_file(lab, host, ready, task)
        yield rounds
    finally:
        await lab.exec(host, ["touch", stop])
        out = await task
        await lab.exec(host, ["rm", "-f", src, stop, ready])
        for line in out.stdout.splitlines():
            if line.strip():
                rounds.append([str(mac) for mac, _ in json.loads(line)["responders"]])


@contextlib.asynccontextmanager
async def nd_watched(
    lab: Lab, vip: str, askers: Sequence[str], window: float = 0.3
) -> AsyncIterator[dict[str, list[list[str]]]]:
    """Solicitation rounds from every asker for the block: {asker: rounds}."""
    async with contextlib.AsyncExitStack() as stack:
        seen = {a: await stack.enter_async_context(soliciting(lab, a, vip, window))
                for a in askers}  # fmt: skip
        yield seen


def only_the_director(seen: dict[str, list[list[str]]], mac: str, *, from_start: bool) -> str:
    """Every round from every asker answered by `mac` alone (or, before the VIP first appears
    in a converge from nothing, by nobody); a summary for the log."""
    for asker, rounds in seen.items():
        assert len(rounds) >= 3, (asker, rounds)
        if from_start:  # the VIP is not there yet at first: nobody, then lvs1 for good
            first = next((i for i, r in enumerate(rounds) if r), len(rounds))
            assert all(r == [] for r in rounds[:first]), (asker, rounds)
            rounds = rounds[first:]
            assert rounds, (asker, "lvs1 never answered")
        assert all(r == [mac] for r in rounds), (asker, rounds)
    return ", ".join(f"{a}: {len(r)} rounds" for a, r in seen.items())


@contextlib.asynccontextmanager
async def listening(lab: Lab, vip: str) -> AsyncIterator[dict[str, list[list[object]]]]:
    """What client1 hears about `vip` during the block (filled in when the block ends)."""
    token = secrets.token_hex(4)
    until, ready = f"/tmp/nd-listen-{token}.stop", f"/tmp/nd-listen-{token}.ready"
    heard: dict[str, list[list[object]]] = {}
    task = asyncio.ensure_future(lab.exec(
        "client1", ["python3", "-", "--vip", vip, "--until", until, "--ready", ready,
                    "--duration", "300"], input=LISTENER, timeout=400,
    ))  # fmt: skip
    await wait_for_file(lab, "client1", ready, task)
    try:
        yield heard
    finally:
        await lab.exec("client1", ["touch", until])
        heard.update(json.loads((await task).stdout))
        await lab.exec("client1", ["rm", "-f", until, ready])


async def neighbour_mac(lab: Lab, host: str, vip: str) -> str | None:
    argv = ["ip", "-6", "-j", "neigh", "show", "to", vip, "dev", "eth0"]
    out = (await lab.exec(host, argv)).stdout
    entries = json.loads(out or "[]")
    return str(entries[0]["lladdr"]) if entries and "lladdr" in entries[0] else None
