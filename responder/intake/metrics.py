"""Prometheus metrics of the intake, on a registry of its own (one per app instance)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram


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
