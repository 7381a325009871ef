"""Outgoing notifications: signed JSON POSTs to the server's receivers, off the reconcile loop.

`Notifier.emit` only puts the event on each interested receiver's bounded queue and returns:
the loop, an approval or a run never waits for a receiver. One background task per receiver
sends its queue in order, one event at a time, retrying an event until it is delivered (network
errors, timeouts, 408, 429 and 5xx; exponential backoff with jitter, capped) before the next
one: so a receiver sees every event once (`X-Shoal-Delivery` names it, the same on every
attempt), in the order they happened. A 4xx other than 408/429 means the receiver will never
take it: that event is given up, logged and counted. A full queue drops the new event, logs it
and counts it in `shoal_notifications_dropped_total`.

Signature: `X-Shoal-Signature: sha256=HEX`, the HMAC-SHA256 with the receiver's secret of
`TIMESTAMP.BODY`, where TIMESTAMP is `X-Shoal-Timestamp` (Unix seconds of this attempt), so a
receiver can refuse old or replayed requests. The HTTP client is the standard library's, in a
thread, with proxies from the environment and redirects both refused (a notification goes to
the URL configured, nowhere else).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.server.metrics import ServerMetrics
from reconciler.server.notify_settings import Receiver

log = logging.getLogger("shoal.notify")

SIGNATURE_HEADER = "X-Shoal-Signature"
TIMESTAMP_HEADER = "X-Shoal-Timestamp"
# A status that says "not now" rather than "never".
_RETRY_STATUSES = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class Notification:
    event: str
    delivery: str
    payload: Mapping[str, Any]

    def body(self) -> bytes:
        return json.dumps(self.payload, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The value of X-Shoal-Signature for `body` sent at `timestamp`."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """POST `body`; the HTTP status (raises OSError when there is no answer)."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(65536)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


class Notifier:
    """Queues and delivery tasks of the receivers. `start()` inside the running loop."""

    def __init__(
        self,
        receivers: Sequence[Receiver],
        metrics: ServerMetrics,
        *,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
    ) -> None:
        self.receivers = tuple(receivers)
        self.metrics = metrics
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._queues: dict[str, asyncio.Queue[Notification]] = {
            r.name: asyncio.Queue(maxsize=r.queue) for r in self.receivers
        }
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._run(r), name=f"shoal-notify-{r.name}")
                           for r in self.receivers]  # fmt: skip

    async def stop(self, timeout: float = 5.0) -> None:
        """Give the queues `timeout` seconds to drain, then stop the delivery tasks."""
        if not self._tasks:
            return
        drained = asyncio.gather(*(q.join() for q in self._queues.values()))
        try:
            await asyncio.wait_for(drained, timeout)
        except TimeoutError:
            left = {n: q.qsize() for n, q in self._queues.items() if q.qsize()}
            log.warning("notifications left undelivered at stop", extra={"queued": left})
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def emit(self, note: Notification) -> None:
        """Queue `note` for every receiver that wants its event; never waits."""
        for receiver in self.receivers:
            if note.event not in receiver.events:
                continue
            queue = self._queues[receiver.name]
            try:
                queue.put_nowait(note)
            except asyncio.QueueFull:
                self.metrics.notifications_dropped.labels(receiver.name).inc()
                log.warning("notification dropped: the receiver's queue is full", extra={
                    "receiver": receiver.name, "event": note.event, "delivery": note.delivery,
                    "queue": receiver.queue})  # fmt: skip
            self.metrics.notification_queue.labels(receiver.name).set(queue.qsize())

    def queued(self, name: str) -> int:
        return self._queues[name].qsize()

    async def _run(self, receiver: Receiver) -> None:
        queue = self._queues[receiver.name]
        while True:
            note = await queue.get()
            try:
                await self._deliver(receiver, note)
            except Exception as exc:  # a bug: the next event must still go
                log.error("notification delivery: a bug", exc_info=exc,
                          extra={"receiver": receiver.name})  # fmt: skip
            finally:
                queue.task_done()
                self.metrics.notification_queue.labels(receiver.name).set(queue.qsize())

    async def _deliver(self, receiver: Receiver, note: Notification) -> None:
        body = note.body()
        counter = self.metrics.notifications
        attempt = 0
        while True:
            attempt += 1
            stamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "shoal",
                "X-Shoal-Event": note.event,
                "X-Shoal-Delivery": note.delivery,
                TIMESTAMP_HEADER: str(stamp),
                SIGNATURE_HEADER: signature(receiver.secret, stamp, body),
            }
            try:
                status = await asyncio.to_thread(_post, receiver.url, body, headers,
                                                 receiver.timeout)  # fmt: skip
                error = f"HTTP {status}"
            except (OSError, ValueError) as exc:
                status, error = 0, f"{type(exc).__name__}: {exc}"
            extra = {"receiver": receiver.name, "event": note.event,
                     "delivery": note.delivery, "attempt": attempt}  # fmt: skip
            if 200 <= status < 300:
                counter.labels(receiver.name, "delivered").inc()
                log.info("notification delivered", extra=extra)
                return
            if 400 <= status < 500 and status not in _RETRY_STATUSES:
                counter.labels(receiver.name, "rejected").inc()
                log.error("notification rejected by the receiver", extra={**extra,
                                                                          "error": error})
                return
            counter.labels(receiver.name, "retried").inc()
            wait = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
            # Jitter in [0.5, 1] of the wait: receivers coming back are not hit in step.
            wait *= random.uniform(0.5, 1.0)
            log.warning("notification not delivered, retrying",
                        extra={**extra, "error": error, "retry_in": round(wait, 3)})
            await asyncio.sleep(wait)
