"""What a harvest reports as it goes, for metrics and the live view; by default, nobody listens.

The scheduler calls these methods and knows nothing of Prometheus or terminals: `Metrics`
(ops/metrics.py) and `LiveView` (ops/live.py) implement them, `Observers` hands each call
to several.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from harvester.clover.chunks import ExportType
from harvester.pacing.gate import HostGate
from harvester.pacing.slots import ExportSlots


class RunObserver:
    """Every event a harvest reports; each method here does nothing."""

    def chunks_planned(self, count: int) -> None:
        """A harvest starts with `count` chunks to do."""

    def host_added(self, region: str, slots: ExportSlots, gate: HostGate) -> None:
        """A Clover host is in use; its slots and gate may be read at any time from now on."""

    def export_created(self, region: str) -> None:
        """A POST created an export on the region's host."""

    def export_done(self, region: str, seconds: float) -> None:
        """An export this run created went from creation to DONE in `seconds`."""

    def busy_503(self, region: str) -> None:
        """The host answered a create with "busy"."""

    def rate_limited(self, region: str, scope: str) -> None:
        """A 429, for one token ("token") or every token on the host ("app")."""

    def lost_create(self, region: str) -> None:
        """A create whose answer never came: an export may run that nobody follows."""

    def chunk_completed(self, type: ExportType, objects: int, size: int) -> None:
        """A chunk's folder is in place with `objects` objects in `size` bytes."""

    def chunk_failed(self, type: ExportType) -> None:
        """A chunk gave up for this run."""

    def load_finished(self, ok: bool, rows: Mapping[ExportType, int]) -> None:
        """A load after the run (`serve`, `load.after_run`) ended, with the rows of each type."""


class Observers(RunObserver):
    """Hands every call to each of several observers, in order."""

    def __init__(self, observers: Sequence[RunObserver]) -> None:
        self._observers = tuple(observers)

    def chunks_planned(self, count: int) -> None:
        for observer in self._observers:
            observer.chunks_planned(count)

    def host_added(self, region: str, slots: ExportSlots, gate: HostGate) -> None:
        for observer in self._observers:
            observer.host_added(region, slots, gate)

    def export_created(self, region: str) -> None:
        for observer in self._observers:
            observer.export_created(region)

    def export_done(self, region: str, seconds: float) -> None:
        for observer in self._observers:
            observer.export_done(region, seconds)

    def busy_503(self, region: str) -> None:
        for observer in self._observers:
            observer.busy_503(region)

    def rate_limited(self, region: str, scope: str) -> None:
        for observer in self._observers:
            observer.rate_limited(region, scope)

    def lost_create(self, region: str) -> None:
        for observer in self._observers:
            observer.lost_create(region)

    def chunk_completed(self, type: ExportType, objects: int, size: int) -> None:
        for observer in self._observers:
            observer.chunk_completed(type, objects, size)

    def chunk_failed(self, type: ExportType) -> None:
        for observer in self._observers:
            observer.chunk_failed(type)
