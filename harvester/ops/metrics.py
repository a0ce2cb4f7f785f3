"""Prometheus metrics of the harvest, in a registry of their own (never the global one).

No metric carries a merchant label: with thousands of merchants that would be thousands of
series per metric. Gauges of a host's slots and window are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from harvester.clock import Clock
from harvester.clover.chunks import ExportType
from harvester.harvest.observer import RunObserver
from harvester.pacing.gate import HostGate
from harvester.pacing.slots import ExportSlots

# A counter's `_created` series says when the process made it: noise on a dashboard.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

RATE_LIMIT_SCOPES = ("token", "app")
EXPORT_DURATION_BUCKETS_S = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800)


class Metrics(RunObserver):
    """Every metric of the harvester; one per process, kept across the runs of `serve`."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.registry = CollectorRegistry()
        registry = self.registry
        self._exports_created = Counter(
            "harvester_exports_created",
            "Exports created on Clover.",
            ["region"],
            registry=registry,
        )
        self._chunks_completed = Counter(
            "harvester_chunks_completed",
            "Chunks whose folder was put in place.",
            ["type"],
            registry=registry,
        )
        self._chunks_failed = Counter(
            "harvester_chunks_failed",
            "Chunks given up on for their run.",
            ["type"],
            registry=registry,
        )
        self._objects = Counter(
            "harvester_objects", "Objects in completed chunks.", ["type"], registry=registry
        )
        self._bytes = Counter(
            "harvester_bytes", "Bytes of completed chunks' parts.", ["type"], registry=registry
        )
        self._busy = Counter(
            "harvester_busy_503",
            "Creates the host answered with 503 busy.",
            ["region"],
            registry=registry,
        )
        self._rate_limited = Counter(
            "harvester_rate_limited",
            "Requests answered with 429, per token or for the whole app.",
            ["region", "scope"],
            registry=registry,
        )
        self._lost_creates = Counter(
            "harvester_lost_creates",
            "Creates whose answer never came (an export may run unfollowed).",
            ["region"],
            registry=registry,
        )
        self._duration = Histogram(
            "harvester_export_duration_seconds",
            "Seconds from an export's creation to DONE.",
            buckets=EXPORT_DURATION_BUCKETS_S,
            registry=registry,
        )
        self._pending = Gauge(
            "harvester_chunks_pending", "Chunks of the current run not done yet.", registry=registry
        )
        self._in_progress = Gauge(
            "harvester_run_in_progress", "1 while a run goes on.", registry=registry
        )
        self._last_success = Gauge(
            "harvester_last_success_timestamp_seconds",
            "When the last run that did all its work ended (Unix time).",
            registry=registry,
        )
        self._hosts = _HostGauges(clock)
        registry.register(self._hosts)
        # `serve` with load.after_run: the load after each run (the harvest stands either way).
        self._loads_failed = Counter(
            "harvester_loads_failed", "Loads into tables that failed.", registry=registry
        )
        self._load_rows = Counter(
            "harvester_load_rows", "Rows loaded into tables.", ["type"], registry=registry
        )
        self._last_load_success = Gauge(
            "harvester_last_load_success_timestamp_seconds",
            "When the last load that loaded every chunk ended (Unix time).",
            registry=registry,
        )

    def regions(self, names: Iterable[str]) -> None:
        """Show these regions' counters at 0 before anything happens on them."""
        for name in names:
            self._exports_created.labels(name)
            self._busy.labels(name)
            self._lost_creates.labels(name)
            for scope in RATE_LIMIT_SCOPES:
                self._rate_limited.labels(name, scope)
        for export_type in ExportType:
            for counter in (self._chunks_completed, self._chunks_failed, self._objects):
                counter.labels(str(export_type))
            self._bytes.labels(str(export_type))

    def run_started(self) -> None:
        self._in_progress.set(1)
        self._pending.set(0)

    def run_finished(self, ok: bool) -> None:
        self._in_progress.set(0)
        if ok:
            self._last_success.set(self._clock.now().timestamp())

    def chunks_planned(self, count: int) -> None:
        self._pending.inc(count)

    def host_added(self, region: str, slots: ExportSlots, gate: HostGate) -> None:
        self._hosts.add(region, slots, gate)

    def export_created(self, region: str) -> None:
        self._exports_created.labels(region).inc()

    def export_done(self, region: str, seconds: float) -> None:
        self._duration.observe(seconds)

    def busy_503(self, region: str) -> None:
        self._busy.labels(region).inc()

    def rate_limited(self, region: str, scope: str) -> None:
        self._rate_limited.labels(region, scope).inc()

    def lost_create(self, region: str) -> None:
        self._lost_creates.labels(region).inc()

    def chunk_completed(self, type: ExportType, objects: int, size: int) -> None:
        self._chunks_completed.labels(str(type)).inc()
        self._objects.labels(str(type)).inc(objects)
        self._bytes.labels(str(type)).inc(size)
        self._pending.dec()

    def chunk_failed(self, type: ExportType) -> None:
        self._chunks_failed.labels(str(type)).inc()
        self._pending.dec()

    def load_finished(self, ok: bool, rows: Mapping[ExportType, int]) -> None:
        for export_type, count in rows.items():
            self._load_rows.labels(str(export_type)).inc(count)
        if ok:
            self._last_load_success.set(self._clock.now().timestamp())
        else:
            self._loads_failed.inc()

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return prometheus_client.generate_latest(self.registry)

    def write_textfile(self, path: str) -> None:
        """Write the metrics to `path` atomically (a temporary file renamed into place)."""
        prometheus_client.write_to_textfile(path, self.registry)


class _HostGauges(Collector):
    """Slots in use, the adaptive slot limit and the window, per region, read when scraped.

    The hosts of the latest run replace those of the one before (`serve` runs many).
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._hosts: dict[str, tuple[ExportSlots, HostGate]] = {}

    def add(self, region: str, slots: ExportSlots, gate: HostGate) -> None:
        self._hosts[region] = (slots, gate)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_use, limit, window = self._families()
        now = self._clock.now()
        for region, (slots, gate) in sorted(self._hosts.items()):
            in_use.add_metric([region], slots.in_use)
            limit.add_metric([region], slots.limit)
            window.add_metric([region], 1 if gate.is_open(now) else 0)
        return iter((in_use, limit, window))

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "harvester_export_slots_in_use",
                "Export slots held on the region's host.",
                labels=["region"],
            ),
            GaugeMetricFamily(
                "harvester_export_slot_limit",
                "The adaptive limit of export slots on the region's host.",
                labels=["region"],
            ),
            GaugeMetricFamily(
                "harvester_window_open",
                "1 while the region's host accepts exports (its table, and what it said).",
                labels=["region"],
            ),
        )
