"""Prometheus metrics, in a registry of the app's own (never the global one: two apps in one
process, as in the tests, must not collide)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.investigation.findings import GAUGES, LABELS, Sample

DURATION_BUCKETS = (1, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)
SAMPLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)  # one recorder sample


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.alerts = Counter(
            "pfi_alerts_received",
            "Alerts received on the webhook, by what became of them",
            ["outcome"],
            registry=r,
        )
        self.investigations = Counter(
            "pfi_investigations",
            "Investigations finished, by outcome (complete, cancelled, failed) and tracer backend",
            ["outcome", "backend"],
            registry=r,
        )
        self.duration = Histogram(
            "pfi_investigation_duration_seconds",
            "Wall time of an investigation, window included",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.sink_deliveries = Counter(
            "pfi_sink_deliveries",
            "Report deliveries to sinks, by sink and outcome (ok, failed)",
            ["sink", "outcome"],
            registry=r,
        )
        self.forwards = Counter(
            "pfi_alert_forwards",
            "Alert batches forwarded to the inspector on another node, by outcome",
            ["outcome"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "pfi_queue_depth", "Investigations queued or running on this node", registry=r
        )
        self.fleet_requests = Counter(
            "pfi_fleet_requests",
            "Requests made for the fleet view and the 'also on N other nodes' line, by target"
            " (prometheus: one PromQL query; peer: one peer asked)",
            ["target"],
            registry=r,
        )
        self.recorder = RecorderMetrics(r)

    def watch_findings(self, findings: Callable[[], Sequence[Sample]]) -> None:
        """The findings' gauges (app.investigation.findings), from `findings()` at each scrape."""
        self.registry.register(FindingsCollector(findings))

    def watch_store(self, store: StoreState) -> None:
        """The store's gauges, read from `store` at each scrape."""
        self.registry.register(StoreCollector(store))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RecorderMetrics:
    """The recorder's own cost and the node rate it sees, in the service's registry (no per-container
    series: cAdvisor has them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.samples = Counter("pfi_recorder_samples", "Samples the flight recorder took", registry=r)
        self.duration = Histogram(
            "pfi_recorder_sample_duration_seconds",
            "Wall time of one recorder sample (every memory cgroup and /proc/vmstat)",
            buckets=SAMPLE_BUCKETS,
            registry=r,
        )
        self.node_rate = Gauge(
            "pfi_recorder_node_major_faults_per_second",
            "The node's major faults per second over the recorder's last interval (/proc/vmstat pgmajfault)",
            registry=r,
        )
        self.cgroups = Gauge("pfi_recorder_cgroups", "Memory cgroups the recorder reads", registry=r)
        self.series = Gauge("pfi_recorder_series", "Containers and host groups with a series in the ring", registry=r)
        self.watch = Counter(
            "pfi_watch_triggers",
            "Watch-mode triggers (node rate above PFI_WATCH_THRESHOLD long enough), by what the scheduler did",
            ["outcome"],
            registry=r,
        )


class StoreState(Protocol):
    """What the store's gauges read (app.service.report_store.ReportStore)."""

    @property
    def ready(self) -> bool: ...

    @property
    def pending(self) -> int: ...

    set_aside: int

    @property
    def unreadable_count(self) -> int: ...


class StoreCollector(Collector):
    """The report store's gauges, computed when /metrics is scraped: they cannot go stale whichever
    code path changed the store."""

    def __init__(self, store: StoreState) -> None:
        self.store = store

    def describe(self) -> Iterator[Metric]:
        return iter(self._families(ready=0, pending=0, set_aside=0, unreadable=0))

    def collect(self) -> Iterator[Metric]:
        s = self.store
        return iter(
            self._families(
                ready=1 if s.ready else 0,
                pending=s.pending,
                set_aside=s.set_aside,
                unreadable=s.unreadable_count,
            )
        )

    @staticmethod
    def _families(*, ready: int, pending: int, set_aside: int, unreadable: int) -> list[Metric]:
        return [
            GaugeMetricFamily("pfi_store_ready", "1 when the report store can be written, else 0", value=ready),
            GaugeMetricFamily(
                "pfi_store_pending_reports",
                "Reports kept in memory because the store could not be written",
                value=pending,
            ),
            GaugeMetricFamily(
                "pfi_store_set_aside_reports",
                "Reports the store could not serialise (set aside, logged) since the start",
                value=set_aside,
            ),
            GaugeMetricFamily(
                "pfi_store_unreadable_reports",
                "Stored reports met since the start that cannot be read (malformed row): skipped, logged once each",
                value=unreadable,
            ),
        ]


class FindingsCollector(Collector):
    """This node's latest finding per workload as gauges (app.investigation.findings), read when
    /metrics is scraped: a finding older than the age is simply not there any more."""

    def __init__(self, findings: Callable[[], Sequence[Sample]]) -> None:
        self.findings = findings

    def describe(self) -> Iterator[Metric]:
        return iter(self._families([]))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(self.findings()))

    @staticmethod
    def _families(samples: Sequence[Sample]) -> list[Metric]:
        families = {name: GaugeMetricFamily(name, text, labels=LABELS) for name, text in GAUGES.items()}
        for s in samples:
            family = families.get(s.name)
            if family is not None:
                family.add_metric([s.labels.get(k, "") for k in LABELS], s.value)
        return list(families.values())
