"""Wakes between servers sharing one PostgreSQL store: LISTEN/NOTIFY on one channel.

A webhook (or a person's approval) reaches whichever server the load balancer in front picked;
the cluster's owner may be another. The receiving server wakes its own loop and NOTIFYs the
channel; every other server LISTENs on a connection of its own (a thread, psycopg's blocking
`notifies()`) and wakes its loop in turn, so the owner makes its pass at once instead of at its
next poll. A lost notification costs only time: the poll is still the safety net.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import psycopg

from reconciler.server.store.database import Store

log = logging.getLogger("shoal.wake")

CHANNEL = "shoal_wake"
# How long a listening wait lasts before it looks whether the server is stopping.
LISTEN_SLICE = 1.0
RECONNECT_AFTER = 2.0


class PostgresPeers:
    """The other servers on the store: `publish` NOTIFYs them; a thread LISTENs and calls the
    loop's `wake` for each notification another server sent."""

    def __init__(self, conninfo: str, store: Store, origin: str) -> None:
        self.conninfo = conninfo
        self.store = store
        self.origin = origin  # this server's name: its own notifications are skipped
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    def publish(self, reason: str) -> None:
        self.store.engine.notify(CHANNEL, f"{self.origin} {reason}")

    def start(self, loop: asyncio.AbstractEventLoop, wake: Callable[[str], None]) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._listen, args=(loop, wake), name="shoal-wake-listener", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=LISTEN_SLICE * 5)
            self._thread = None

    def _listen(self, loop: asyncio.AbstractEventLoop, wake: Callable[[str], None]) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=LISTEN_SLICE):
                            origin, _, reason = note.payload.partition(" ")
                            if origin != self.origin:
                                loop.call_soon_threadsafe(wake, f"{reason} (via {origin})")
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("wake listener lost its connection", extra={"error": str(exc)})
                self._stop.wait(RECONNECT_AFTER)
