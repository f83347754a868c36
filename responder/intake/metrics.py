"""Prometheus metrics of the intake, on a registry of its own (one per app instance)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


def _registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


@dataclass
class IntakeMetrics:
    registry: CollectorRegistry = field(default_factory=_registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.received = Counter("drift_alerts_received", "Alerts in requests that passed auth",
                                registry=r)
        self.accepted = Counter("drift_alerts_accepted", "Alerts recorded", registry=r)
        self.rejected = Counter("drift_alerts_rejected", "Requests refused, by reason",
                                ["reason"], registry=r)
        self.opened = Counter("drift_incidents_opened", "Incidents opened", registry=r)
        self.dedup_hits = Counter("drift_dedup_hits",
                                  "Alerts folded into an incident that was already open",
                                  registry=r)
        self.latency = Histogram(
            "drift_intake_request_seconds", "Intake request latency", ["outcome"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )

    def watch_suppressions(self, totals: Callable[[], Mapping[str, int]]) -> None:
        """Export ``drift_alerts_suppressed_total{suppression}`` (alerts accepted but recorded
        in no incident), read from the suppression cache's own counters when scraped: nothing
        is done per alert."""
        self.registry.register(_BySuppression(totals))


_BY_SUPPRESSION = ("drift_alerts_suppressed",
                   "Alerts accepted but recorded in no incident, by the suppression that "
                   "covers them")


class _BySuppression(Collector):
    def __init__(self, totals: Callable[[], Mapping[str, int]]) -> None:
        self.totals = totals

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(*_BY_SUPPRESSION, labels=["suppression"])

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(*_BY_SUPPRESSION, labels=["suppression"])
        for suppression, count in sorted(self.totals().items()):
            family.add_metric([suppression], count)
        yield family
