"""How long exports took, per merchant and type and per host: what polling predicts with.

Learned as exports end in this run, and read from the state store once per merchant, both
types in one read (the latest exports of its covered chunks: their DONE was recorded when it
was seen, so they are a little long, which errs toward a poll early rather than late). A
merchant and type with no export seen yet borrows the shorter half of its host's
(pacing/polling.py); at the start of a run, before any export of its host was seen, the
shorter half of the latest covered exports of the type of any merchant in the store, read
once per type: a merchant new on the second night is not polled as if nothing were known.
These may be of other hosts (the store does not know which): borrowed only until the host
has a history of its own.
"""

from __future__ import annotations

from collections import deque

from harvester.clover.chunks import ExportType, TimeRange
from harvester.pacing.polling import expected_durations
from harvester.state.records import StateStore

# Per host, the exports of every merchant: enough to hold a few of each size.
_HOST_KEPT = 200


def _span_s(range_: TimeRange) -> float:
    return (range_.end - range_.start).total_seconds()


class ExportDurations:
    """Durations of ended exports as (seconds to DONE, seconds of range), kept `latest` per
    merchant and type. `latest` 0 learns nothing: polling goes by progress alone."""

    def __init__(self, store: StateStore, latest: int) -> None:
        self._store = store
        self._latest = latest
        self._by_kind: dict[tuple[str, ExportType], deque[tuple[float, float]]] = {}
        self._by_host: dict[str, deque[tuple[float, float]]] = {}
        self._by_type: dict[ExportType, list[tuple[float, float]]] = {}  # any merchant's

    async def expected(
        self, host: str, merchant_id: str, type: ExportType, range_: TimeRange
    ) -> tuple[float, ...]:
        """How long an export of this merchant, type and range may take, sorted; () if unknown."""
        if self._latest <= 0:
            return ()
        key = (merchant_id, type)
        if key not in self._by_kind:
            # Both types of the merchant in one read: its other type comes up soon after.
            for each, history in (
                await self._store.past_durations(merchant_id, self._latest)
            ).items():
                known = (merchant_id, each)
                if known not in self._by_kind:
                    self._by_kind[known] = deque(maxlen=self._latest)
                    for seen in history:
                        self._keep(host, known, seen)
        span_s = _span_s(range_)
        if self._by_kind[key]:
            return expected_durations(self._by_kind[key], span_s)
        if self._by_host.get(host):
            return expected_durations(self._by_host[host], span_s, lower_half=True)
        if type not in self._by_type:
            self._by_type[type] = await self._store.recent_durations(type, self._latest)
        return expected_durations(self._by_type[type], span_s, lower_half=True)

    def observe(
        self, host: str, merchant_id: str, type: ExportType, range_: TimeRange, seconds: float
    ) -> None:
        """An export of this range took `seconds` from creation to DONE."""
        if self._latest > 0 and seconds > 0:
            key = (merchant_id, type)
            self._by_kind.setdefault(key, deque(maxlen=self._latest))
            self._keep(host, key, (seconds, _span_s(range_)))

    def _keep(self, host: str, key: tuple[str, ExportType], seen: tuple[float, float]) -> None:
        self._by_kind[key].append(seen)
        self._by_host.setdefault(host, deque(maxlen=_HOST_KEPT)).append(seen)
