"""What `GET /metrics` exposes, in the Prometheus text format (prometheus_client).

Two kinds of series. Totals the records already hold (plans by state, runs by outcome, runs
that rolled back, failed verifications, drift reports, the revision in force per cluster) are
counted from the store at each scrape, so a restarted server tells the same story and nothing
is counted twice. What only this process sees (reconcile passes and their duration, the facts
round trip, each apply phase's duration, webhook deliveries, notifications by receiver, hosts
unreachable now) is kept in memory. Every label has a bounded set of values (states, outcomes,
phases, clusters, the receivers of the server's file): no plan, run or request id is ever a
label. One registry per server, not the library's global one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler.apply.events import ApplyEvent
from reconciler.server.store.database import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A run state that is not an outcome yet.
IN_PROGRESS = "applying"
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _StoreTotals(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        t = self.store.totals()
        plans = GaugeMetricFamily("shoal_plans", "Plans in the store by state", labels=["state"])
        for state, n in sorted(t.plans_by_state.items()):
            plans.add_metric([state], n)
        yield plans
        runs = CounterMetricFamily("shoal_runs", "Finished runs by outcome", labels=["outcome"])
        for state, n in sorted(t.runs_by_state.items()):
            if state != IN_PROGRESS:
                runs.add_metric([state], n)
        yield runs
        yield GaugeMetricFamily("shoal_runs_in_progress", "Runs applying now",
                                value=t.runs_by_state.get(IN_PROGRESS, 0))  # fmt: skip
        yield CounterMetricFamily("shoal_rollbacks", "Runs that rolled back at least one step",
                                  value=t.runs_rolled_back)  # fmt: skip
        yield CounterMetricFamily("shoal_verification_failures",
                                  "Runs whose verification with real traffic failed",
                                  value=t.verification_failures)  # fmt: skip
        yield CounterMetricFamily("shoal_drift_found",
                                  "Drift reports: plans made because hosts left the applied "
                                  "revision", value=t.drift_reports)  # fmt: skip
        info = GaugeMetricFamily("shoal_revision_info", "The revision in force per cluster",
                                 labels=["cluster", "revision"])  # fmt: skip
        for cluster, revision in sorted(t.applied_revisions.items()):
            info.add_metric([cluster, revision], 1)
        yield info


class ServerMetrics:
    def __init__(self, store: Store | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.passes = Counter("shoal_reconcile_passes", "Reconcile passes by result",
                              ["result"], registry=r)  # fmt: skip
        self.pass_seconds = Histogram("shoal_reconcile_pass_duration_seconds",
                                      "Duration of one reconcile pass", buckets=_SECONDS,
                                      registry=r)  # fmt: skip
        self.facts_seconds = Histogram("shoal_facts_round_trip_duration_seconds",
                                       "Gathering one unit's facts (one SSH round trip per "
                                       "host, all hosts at once)", buckets=_SECONDS,
                                       registry=r)  # fmt: skip
        self.phase_seconds = Histogram("shoal_apply_phase_duration_seconds",
                                       "Duration of one apply phase over all its hosts",
                                       ["phase"], buckets=_SECONDS, registry=r)  # fmt: skip
        self.webhooks = Counter("shoal_webhook_deliveries", "Webhook deliveries by result",
                                ["result"], registry=r)  # fmt: skip
        self.notifications = Counter("shoal_notifications",
                                     "Notification attempts by receiver and result (delivered, "
                                     "retried, rejected)", ["receiver", "result"],
                                     registry=r)  # fmt: skip
        self.notifications_dropped = Counter("shoal_notifications_dropped",
                                             "Notifications dropped: the receiver's queue was "
                                             "full", ["receiver"], registry=r)  # fmt: skip
        self.notification_queue = Gauge("shoal_notification_queue_depth",
                                        "Notifications waiting for their receiver",
                                        ["receiver"], registry=r)  # fmt: skip
        self.unreachable = Gauge("shoal_hosts_unreachable",
                                 "Hosts the last look at their unit could not reach",
                                 registry=r)  # fmt: skip
        self._unreachable: dict[str, int] = {}
        if store is not None:
            r.register(_StoreTotals(store))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def hosts_unreachable(self, unit: str, count: int) -> None:
        """The count for one unit's last look; the gauge is their sum."""
        self._unreachable[unit] = count
        self.unreachable.set(sum(self._unreachable.values()))

    def phase_timer(self) -> PhaseTimer:
        return PhaseTimer(self)


class PhaseTimer:
    """Observes each phase's duration from the executor's events: a phase lasts from its
    "phase" event to the next phase, the verification or the end."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.current: tuple[str, float] | None = None

    def __call__(self, event: ApplyEvent) -> None:
        if event.kind not in ("phase", "verify", "done"):
            return
        now = time.monotonic()
        if self.current is not None:
            phase, started = self.current
            self.metrics.phase_seconds.labels(phase).observe(now - started)
            self.current = None
        if event.kind == "phase" and event.phase is not None:
            self.current = (event.phase, now)
