"""The harvest: a worker per merchant, export slots per host, and each chunk's life.

A chunk's life: wait for the host's window, take an export slot (round-robin across
merchants), POST the export and record its id at once, poll it until DONE while holding
the slot, give the slot back, then download its files and swap its folder into place.
A chunk already in flight when a run starts (the last one died) picks up where it was:
polling its stored export, or downloading the parts not saved yet.

A failed export is created again after a jittered exponential backoff (at most
`export_cooldown_s`); one whose files expired, at once. An export DONE that lists no files
is believed (an empty chunk) only once a second export of the range says the same. A create
whose answer was lost leaves an orphan that holds a slot of its host for a while
(pacing/orphans.py).

Other processes may share the state: a chunk is harvested only under its claim (see
state/claims.py). A chunk claimed by another process waits until the queue is empty, then until
that process is done with it (reported as done elsewhere) or gone (taken over).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from harvester.clock import Clock, nap
from harvester.clover.api import DONE_STATUSES, RUNNING_STATUSES, ExportInfo
from harvester.clover.chunks import ExportType
from harvester.config import Config, Merchant
from harvester.errors import (
    AnswerLost,
    CloverUnavailable,
    ExportFailed,
    ExportNotFound,
    FileExpired,
    HarvesterError,
    OutputError,
    PermissionMissing,
    ServerBusy,
    StoreError,
    TokenCommandFailed,
    TokenRejected,
    Unavailable503,
    WindowClosed,
)
from harvester.harvest.downloader import Downloader
from harvester.harvest.durations import ExportDurations
from harvester.harvest.hosts import Host, Hosts
from harvester.harvest.merchant import MerchantClient
from harvester.harvest.observer import RunObserver
from harvester.harvest.summary import Summary
from harvester.logs import bound_context, get_logger
from harvester.output.folder import NOTHING_IN_PLACE
from harvester.output.room import OutputRoom
from harvester.output.target import ChunkTarget, Output
from harvester.pacing.backoff import backoff_delay, capped_backoff_delay
from harvester.pacing.orphans import OrphanHolds
from harvester.pacing.polling import ProgressRate, next_poll_delay
from harvester.pacing.slots import Slot
from harvester.state.claims import ClaimLost, ProcessLease
from harvester.state.records import (
    ChunkRecord,
    ChunkStatus,
    ClaimResult,
    ExportRecord,
    ExportState,
    PartRecord,
    StateStore,
)
from harvester.state.shared import HeldSlot


@dataclass(frozen=True, slots=True)
class MerchantWork:
    """The chunks one merchant should have harvested by the end of the run."""

    merchant: Merchant
    chunks: tuple[ChunkRecord, ...]


# The first wait before chunks held by another process are looked at again (_hold_wait_s).
HOLD_FIRST_LOOK_S = 0.25


@dataclass(slots=True, eq=False)
class _Merchant:
    """A merchant taken up by a runner: its client, and the chunks left to it this run."""

    merchant: Merchant
    host: Host
    client: MerchantClient
    queue: deque[ChunkRecord]
    deferred: deque[ChunkRecord] = field(default_factory=deque)  # claimed by another process
    refusal: str | None = None  # set once Clover refused the merchant: no more tries this run
    waited: set[int] = field(default_factory=set)  # deferred ids looked at since the last nap
    reported: set[int] = field(default_factory=set)  # ids logged as held elsewhere
    claims: dict[int, ClaimResult] = field(default_factory=dict)  # taken for its turn
    look_again_at: float | None = None  # monotonic: when its chunks held elsewhere are next
    # looked at, once a turn left them deferred
    hold_wait_s: float = HOLD_FIRST_LOOK_S  # the wait before the next look (see _hold_wait_s)


# A merchant waiting for its turn, not yet taken up, or put back with chunks held elsewhere.
_Waiting = MerchantWork | _Merchant


def active_merchants(maximum: int) -> int:
    """How many merchants of a host are taken up at once, for its limit of `maximum` exports.

    Enough that its slots never wait for a merchant (each has up to `maximum` lanes, and a
    lane is busy downloading after its slot went back), few enough that ten thousand
    merchants with nothing to do right now cost a queue entry each, not tasks and clients.
    """
    return max(16, 4 * maximum)


class _Stopped(Exception):
    """The run is shutting down; the chunk stays as it is for the next run."""


class _NoFilesListed(ExportFailed):
    """An export ended DONE listing no files: an empty range, or a glitch. Not believed yet."""


class Harvest:
    """One run's harvest of the given work, on the hosts and downloader it is handed."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        hosts: Hosts,
        downloader: Downloader,
        destination: Output,
        clock: Clock,
        stop: asyncio.Event,
        rng: random.Random | None = None,
        observer: RunObserver | None = None,
    ) -> None:
        self._config = config
        self._observer = observer or RunObserver()
        self._announced: set[str] = set()  # regions whose host the observer was shown
        self._store = store
        self._hosts = hosts
        self._downloader = downloader
        self._destination = destination  # the folder or the bucket: chunks land there alike
        self._clock = clock
        self._stop = stop
        self._rng = rng or random.Random()
        self._orphans = OrphanHolds(clock)
        self._durations = ExportDurations(store, config.timing.poll_history)
        self._room = OutputRoom(config.output_dir, config.min_free_bytes)
        self._waiting: dict[str, deque[_Waiting]] = {}  # per region: merchants to take up
        self._runners: Counter[str] = Counter()  # per region: runners taking them up
        self._all_planned = True  # False while merchants are still being planned
        self.summary = Summary()

    @property
    def lease(self) -> ProcessLease:
        """This process's lease on the state (its hosts'): claims are taken under it."""
        return self._hosts.lease

    async def run(
        self,
        work: Sequence[MerchantWork],
        more: AsyncIterator[Sequence[MerchantWork]] | None = None,
    ) -> Summary:
        """Harvest `work`, and what `more` yields as it comes (planned meanwhile)."""
        if not self.lease.active:
            # Not entered by the caller (as in-process tests run it): for this run only.
            async with self.lease:
                return await self._run(work, more)
        return await self._run(work, more)

    async def _run(
        self, work: Sequence[MerchantWork], more: AsyncIterator[Sequence[MerchantWork]] | None
    ) -> Summary:
        self._all_planned = more is None
        try:
            # Clover's app limits are shared with the other processes on the state meanwhile.
            async with self._hosts.sharing(), asyncio.TaskGroup() as group:
                self._take_up(group, work)
                if more is not None:
                    group.create_task(self._take_up_planned(group, more))
        except* StoreError as errors:
            # Nothing can be recorded any more (the state's disk is full, say): every worker
            # has stopped, and what was not recorded is redone by the next run.
            error = _first(errors)
            self.summary.problems.append(f"stopped: {error}")
            get_logger().error("run.state_failed", error=str(error))
        finally:
            await self._orphans.close()
        # Merchants not planned yet when it stopped are work left too.
        self.summary.stopped = self._stop.is_set() and not (
            self._all_planned and self.summary.all_done
        )
        return self.summary

    async def _take_up_planned(
        self, group: asyncio.TaskGroup, more: AsyncIterator[Sequence[MerchantWork]]
    ) -> None:
        async for work in more:
            if self._stop.is_set():
                return
            self._take_up(group, work)
        self._all_planned = True

    def _take_up(self, group: asyncio.TaskGroup, work: Sequence[MerchantWork]) -> None:
        """Queue the merchants' work on their hosts, with runners for it as needed."""
        for item in work:
            for chunk in item.chunks:
                self.summary.tally(item.merchant.id, ExportType(chunk.type)).chunks_planned += 1
        self._observer.chunks_planned(sum(len(item.chunks) for item in work))
        touched: dict[str, Host] = {}
        for item in work:
            if item.chunks:
                host = self._host(item.merchant)
                self._waiting.setdefault(host.region.name, deque()).append(item)
                touched[host.region.name] = host
        for name, host in touched.items():
            queue = self._waiting[name]
            wanted = min(len(queue), active_merchants(host.slots.maximum) - self._runners[name])
            for _ in range(wanted):
                self._runners[name] += 1
                group.create_task(self._runner(host, queue), name=f"merchants-{name}")

    def _host(self, merchant: Merchant) -> Host:
        host = self._hosts.host(merchant.region)
        if merchant.region.name not in self._announced:
            self._announced.add(merchant.region.name)
            self._observer.host_added(merchant.region.name, host.slots, host.gate)
        return host

    async def _runner(self, host: Host, waiting: deque[_Waiting]) -> None:
        """Take up the host's waiting merchants one after another, each for its turn."""
        try:
            await self._take_turns(host, waiting)
        finally:
            self._runners[host.region.name] -= 1

    async def _take_turns(self, host: Host, waiting: deque[_Waiting]) -> None:
        while waiting and not self._stop.is_set():
            item = waiting.popleft()
            if isinstance(item, _Merchant):
                state = item
                if state.look_again_at is not None:
                    # Its chunks were all held elsewhere a moment ago: give their holders time.
                    left_s = state.look_again_at - self._clock.monotonic()
                    if left_s > 0 and not await self._nap(left_s):
                        return
                    await self.lease.reap()
            else:
                # Chunks already in flight go first: their exports hold server slots now.
                ordered = sorted(
                    item.chunks, key=lambda c: (c.export_id is None, c.range.start, c.type)
                )
                client = self._hosts.client(item.merchant)
                state = _Merchant(item.merchant, host, client, deque(ordered))
            with bound_context(merchant=state.merchant.id):
                await self._turn(state, waiting)
            if state.deferred and not self._stop.is_set():
                # Held elsewhere: the merchants waiting behind it go first.
                state.look_again_at = self._clock.monotonic() + self._hold_wait_s(state)
                waiting.append(state)

    async def _turn(self, state: _Merchant, waiting: deque[_Waiting]) -> None:
        """Harvest the merchant's chunks, its lanes claiming them all in one transaction."""
        state.queue.extend(state.deferred)
        state.deferred.clear()
        claims = await self.lease.claim_many([chunk.id for chunk in state.queue])
        state.claims = {claim.chunk.id: claim for claim in claims}
        # A merchant may run several exports at once when slots are free; fairness between
        # merchants is the slots' job.
        lanes = min(state.host.slots.maximum, len(state.queue))
        async with asyncio.TaskGroup() as group:
            for _ in range(lanes):
                group.create_task(self._lane(state, waiting))

    async def _lane(self, state: _Merchant, waiting: deque[_Waiting]) -> None:
        while not self._stop.is_set():
            if state.queue:
                chunk = state.queue.popleft()
            elif state.deferred:
                if waiting:
                    return  # other merchants wait for the runner: these come after them
                chunk = state.deferred.popleft()
                now = self._clock.monotonic()
                due = state.look_again_at is None or state.look_again_at <= now
                leads = chunk.id in state.waited and due
                if leads:
                    # A whole round of chunks held elsewhere: give their holders time. The
                    # merchant's other lanes wait for the same instant.
                    state.waited.clear()
                    state.look_again_at = now + self._hold_wait_s(state)
                if state.look_again_at is not None and state.look_again_at > now:
                    if not await self._nap(state.look_again_at - now):
                        return
                    if leads:
                        await self.lease.reap()
                state.waited.add(chunk.id)
            else:
                return
            with bound_context(type=str(chunk.type), range=str(chunk.range)):
                await self._claimed(state, chunk)

    def _hold_poll_s(self) -> float:
        """How often, at most, a chunk held by another process is looked at again."""
        return min(5.0, self.lease.lease_s / 10)

    def _hold_wait_s(self, state: _Merchant) -> float:
        """How long before the merchant's chunks held elsewhere are looked at again. Such a
        chunk is mostly an export in flight there, done within seconds: the first look
        comes soon, and each next one twice as late, up to `_hold_poll_s`. A chunk of the
        merchant found done, or claimed, starts the waits short again."""
        wait_s = min(state.hold_wait_s, self._hold_poll_s())
        state.hold_wait_s = min(2 * wait_s, self._hold_poll_s())
        return wait_s

    async def _claimed(self, state: _Merchant, chunk: ChunkRecord) -> None:
        """Harvest the chunk under its claim, or defer it while another process holds it."""
        log = get_logger()
        tally = self.summary.tally(chunk.merchant_id, ExportType(chunk.type))
        # Claimed with the merchant's other chunks when its turn began, or now.
        claim = state.claims.pop(chunk.id, None) or await self.lease.claim(chunk.id)
        if claim.chunk.status is ChunkStatus.COMPLETE:
            # Done by another process since this run planned it.
            if claim.granted:
                await self.lease.release(chunk.id)
            state.waited.discard(chunk.id)
            state.hold_wait_s = HOLD_FIRST_LOOK_S
            tally.chunks_done += 1
            tally.chunks_elsewhere += 1
            self._observer.chunk_completed(ExportType(chunk.type), 0, 0)
            log.info("chunk.done_elsewhere")
            return
        if not claim.granted:
            holder = claim.held_by
            assert holder is not None
            if chunk.id not in state.reported:
                state.reported.add(chunk.id)
                log.info(
                    "chunk.held_elsewhere",
                    host=holder.host,
                    pid=holder.pid,
                    command=holder.command,
                    lease_until=holder.lease_until.isoformat(),
                )
            state.deferred.append(claim.chunk)
            return
        state.waited.discard(chunk.id)
        state.hold_wait_s = HOLD_FIRST_LOOK_S
        chunk = claim.chunk  # as it stands now: another process may have moved it on
        released = False  # the claim went with the chunk's completion
        try:
            if state.refusal is not None:
                await self._store.fail_chunk(chunk.id, state.refusal)
                tally.chunks_failed += 1
                self._observer.chunk_failed(ExportType(chunk.type))
                return
            try:
                released = await self._harvest_chunk(state, chunk)
            except _Stopped:
                pass
            except ClaimLost as exc:
                # Another process took it over while this one's lease had lapsed: what this
                # one staged is no use to anybody; wait to see it done.
                log.warning("chunk.claim_lost", error=str(exc))
                await self._output(chunk).discard_staging()
                state.deferred.append(chunk)
            except StoreError:
                raise  # the run cannot go on without its state
            except Exception as exc:  # one chunk's bug must not tear down the others
                log.exception("chunk.crashed")
                await self._fail(chunk, f"unexpected error: {type(exc).__name__}: {exc}")
        finally:
            if not released:
                await self.lease.release(chunk.id)

    async def _fail(self, chunk: ChunkRecord, error: str) -> None:
        await self.lease.confirm(chunk.id)
        await self._store.fail_chunk(chunk.id, error)
        tally = self.summary.tally(chunk.merchant_id, ExportType(chunk.type))
        tally.chunks_failed += 1
        self._observer.chunk_failed(ExportType(chunk.type))
        tally.errors.append(f"{chunk.range.name}: {error}")
        get_logger().error("chunk.failed", error=error)

    async def _harvest_chunk(self, state: _Merchant, chunk: ChunkRecord) -> bool:
        """True once the chunk is COMPLETE, its claim released with it; False if it
        failed or was refused (its claim still held)."""
        log = get_logger()
        tally = self.summary.tally(chunk.merchant_id, ExportType(chunk.type))
        failed_exports = 0
        no_files_once = False  # the last export ended DONE listing no files
        while True:
            try:
                export, recorded = await self._finished_export(state, chunk, no_files_once)
                if self._stop.is_set():
                    raise _Stopped
                output = self._output(chunk)
                # An export created just now (not the chunk's stored one) cannot be in place
                # yet, and what gone processes staged of the chunk belongs to an earlier
                # export, of no use to this one (the next run's recover clears it): its
                # place is not looked at, which saves a thread job per export.
                look = NOTHING_IN_PLACE if export.id != chunk.export_id else await output.look()
                if look.staged_elsewhere:
                    # Adopted only under the claim, from processes known to be gone: the
                    # state is asked who they are only when there is staging to adopt.
                    await self.lease.confirm(chunk.id)
                    adopted = await output.adopt_staging(await self.lease.gone_owners())
                    if adopted is not None:
                        log.info("staging.adopted", path=str(adopted))
                if recorded is None:
                    # The claim confirmed and the parts saved so far, in one store operation.
                    recorded = await self.lease.held_parts(chunk.id, export.id)
                manifest = await self._downloader.publish_chunk(
                    output, chunk, export, look.published, recorded
                )
                await self.lease.complete(chunk.id)
                self._room.published(sum(part.size for part in manifest.parts))
                objects = sum(part.objects for part in manifest.parts)
                tally.chunks_done += 1
                tally.chunks_empty += manifest.empty_reason is not None
                tally.objects += objects
                tally.parts += len(manifest.parts)
                tally.bytes += sum(part.size for part in manifest.parts)
                self._observer.chunk_completed(
                    ExportType(chunk.type), objects, sum(part.size for part in manifest.parts)
                )
                log.info(
                    "chunk.completed",
                    export_id=export.id,
                    parts=len(manifest.parts),
                    objects=objects,
                    empty=manifest.empty_reason,
                )
                return True
            except ClaimLost:
                raise
            except (ExportFailed, ExportNotFound, FileExpired) as exc:
                await self.lease.confirm(chunk.id)
                current = await self._store.get_chunk(chunk.id)
                if current.export_id is not None:
                    ended = (
                        ExportState.LOST
                        if isinstance(exc, ExportNotFound)
                        else ExportState.EXPIRED
                        if isinstance(exc, FileExpired)
                        else ExportState.FAILED
                    )
                    await self._store.end_export(current.export_id, ended, str(exc))
                # Parts of a dead export must never be published with the next export's.
                await self._output(chunk).discard_staging()
                no_files_once = isinstance(exc, _NoFilesListed)
                if no_files_once:
                    # Not a failure (yet): a second export of the range is asked at once.
                    self.summary.events["export_no_files_unconfirmed"] += 1
                    log.info("export.no_files", export_id=current.export_id, error=str(exc))
                    chunk = await self._store.get_chunk(chunk.id)
                    continue
                failed_exports += 1
                self.summary.events[f"export_{type(exc).__name__}"] += 1
                wait_s = self._recreate_wait_s(exc, failed_exports)
                log.warning(
                    "export.failed",
                    export_id=current.export_id,
                    error=str(exc),
                    attempt=failed_exports,
                    wait_s=round(wait_s, 3),
                )
                if failed_exports >= self._config.max_export_attempts:
                    await self._fail(chunk, f"{failed_exports} exports failed, the last: {exc}")
                    return False
                if wait_s > 0 and not await self._nap(wait_s):
                    raise _Stopped from exc
                chunk = await self._store.get_chunk(chunk.id)
            except PermissionMissing as exc:
                await self._refuse(state, chunk, "export permission missing", exc)
                return False
            except TokenRejected as exc:
                await self._refuse(state, chunk, "token rejected", exc)
                return False
            except TokenCommandFailed as exc:
                await self._refuse(state, chunk, str(exc), exc)
                return False
            except OutputError as exc:
                if self._room.failed(exc):
                    self.summary.problems.append(f"{exc}: no more exports created this run")
                    get_logger().error("output.unusable", error=str(exc))
                await self._fail(chunk, str(exc))
                return False
            except StoreError:
                raise
            except HarvesterError as exc:
                if self._stop.is_set():
                    # Cut short by the stop (a retry's backoff, say): not the chunk's failure.
                    # Its export, if any, is recorded: the next run picks it up.
                    raise _Stopped from exc
                await self._fail(chunk, str(exc))
                return False

    def _recreate_wait_s(self, exc: Exception, failed_exports: int) -> float:
        """Expired files are no server failure: export again at once. Else a jittered
        exponential backoff from backoff_base_s, at most export_cooldown_s."""
        if isinstance(exc, FileExpired):
            return 0.0
        timing = self._config.timing
        return capped_backoff_delay(
            failed_exports - 1, timing.backoff_base_s, timing.export_cooldown_s, self._rng
        )

    def _output(self, chunk: ChunkRecord) -> ChunkTarget:
        return self._destination.chunk(
            chunk.merchant_id, ExportType(chunk.type), chunk.range, owner=self.lease.owner.id
        )

    async def _refuse(
        self, state: _Merchant, chunk: ChunkRecord, why: str, exc: HarvesterError
    ) -> None:
        state.refusal = why
        self.summary.refusals[state.merchant.id] = why
        get_logger().error("merchant.refused", reason=why, error=str(exc))
        await self._fail(chunk, why)

    async def _finished_export(
        self, state: _Merchant, chunk: ChunkRecord, confirming: bool
    ) -> tuple[ExportRecord, list[PartRecord] | None]:
        """The chunk's export once DONE: the stored one, a re-attached one, or a new one;
        with the parts saved of it, read as its DONE was recorded (None: not read yet).

        `confirming`: the last export listed no files; if this one says the same, believe it.
        """
        record = (
            await self._store.get_export(chunk.export_id) if chunk.export_id is not None else None
        )
        if record is not None and record.state is ExportState.DONE:
            return record, None
        if record is not None and record.state is ExportState.RUNNING:
            get_logger().info("export.reattached", export_id=record.id, percent=record.percent)
            async with (
                state.host.slots.hold(state.merchant.id) as slot,
                state.host.shared.hold(state.merchant.id) as shared_slot,
            ):
                state.host.slots.runs(slot)
                return await self._follow(state, chunk, record, None, confirming, shared_slot)
        return await self._create_and_follow(state, chunk, confirming)

    async def _create_and_follow(
        self, state: _Merchant, chunk: ChunkRecord, confirming: bool
    ) -> tuple[ExportRecord, list[PartRecord]]:
        host = state.host
        log = get_logger()
        transient_failures = 0
        # An export's slot is scarce: never spend one on files that cannot be written. The
        # disk is looked at once per chunk, or once a second when chunks come faster; a
        # write failing meanwhile is seen below.
        now_s = self._clock.monotonic()
        if not self._room.fresh(now_s):
            await asyncio.to_thread(self._room.check, now_s)
        while True:
            pause_s = 0.0
            # The slots (this process's, then the host's across processes) before the gate:
            # the store calls they take must not come between the gate's word and the POST.
            # A new export only under the chunk's claim (confirmed as the host's slot is
            # granted: ClaimLost if another process took it over): one export per chunk.
            async with (
                host.slots.hold(state.merchant.id) as slot,
                host.shared.hold(state.merchant.id, chunk.id) as shared_slot,
                host.gate.admission(self._stop) as admitted,
            ):
                if not admitted:
                    raise _Stopped
                # The host may have said "closed" or "busy" to another lane meanwhile.
                if self._stop.is_set() or host.gate.wait_s(self._clock.now()) > 0:
                    continue
                refusal = self._room.refusal()  # a write failed while this lane waited
                if refusal is not None:
                    raise refusal
                try:
                    info = await self._create_export(state, chunk)
                except ServerBusy as exc:
                    # The slot goes back; the gate holds every lane of the host back
                    # for the backoff, so that no other lane retries into the same wall.
                    host.slots.busy()
                    wait_s = host.gate.busy()
                    self.summary.events["busy_503"] += 1
                    self._observer.busy_503(host.region.name)
                    log.info(
                        "export.busy",
                        limit=host.slots.limit,
                        wait_s=round(wait_s, 3),
                        error=str(exc),
                    )
                    # Every process on the state holds back; the shared limit follows.
                    await host.shared.busy(
                        self._clock.now() + timedelta(seconds=wait_s), host.slots.limit
                    )
                except WindowClosed as exc:
                    host.gate.closed(exc)
                    self.summary.events["window_503"] += 1
                    log.info("export.window_closed", error=str(exc))
                except CloverUnavailable as exc:
                    lost = isinstance(exc, AnswerLost)
                    if lost:
                        await self._hold_orphan(host, slot, chunk)
                    transient_failures += 1
                    if transient_failures >= self._config.timing.max_attempts:
                        raise
                    pause_s = backoff_delay(
                        transient_failures - 1,
                        self._config.timing.backoff_base_s,
                        self._config.timing.backoff_max_s,
                        self._rng,
                    )
                    log.warning(
                        "export.create_lost" if lost else "export.create_retry",
                        error=str(exc),
                        attempt=transient_failures,
                        wait_s=round(pause_s, 3),
                    )
                else:
                    host.gate.created()
                    host.slots.went_through(slot)
                    # An export whose id is lost is a slot wasted until it ends: the record
                    # lands even if this lane is cancelled now (a store call, once made, does).
                    record = await self._store.record_export(
                        chunk.id, info.id, info.status, info.percent
                    )
                    await host.shared.went_through()
                    self.summary.tally(
                        chunk.merchant_id, ExportType(chunk.type)
                    ).exports_created += 1
                    self._observer.export_created(host.region.name)
                    log.info("export.created", export_id=info.id)
                    return await self._follow(state, chunk, record, info, confirming, shared_slot)
            if pause_s > 0 and not await self._nap(pause_s):
                raise _Stopped

    async def _create_export(self, state: _Merchant, chunk: ChunkRecord) -> ExportInfo:
        """One POST; a 503 comes back as what the host's gate makes of it, closed or busy."""
        try:
            return await state.client.create_export(ExportType(chunk.type), chunk.range)
        except Unavailable503 as exc:
            raise state.host.gate.classify_503(exc) from exc

    async def _hold_orphan(self, host: Host, slot: Slot, chunk: ChunkRecord) -> None:
        """A create lost its answer: the export may exist, an orphan holding a server slot."""
        self._orphans.hold(host.region.name, host.slots, slot, host.gate.expected_duration_s)
        await asyncio.shield(self._store.note_lost_create(chunk.id))
        self.summary.tally(chunk.merchant_id, ExportType(chunk.type)).lost_creates += 1
        self.summary.events["lost_create"] += 1
        self._observer.lost_create(host.region.name)

    async def _follow(
        self,
        state: _Merchant,
        chunk: ChunkRecord,
        record: ExportRecord,
        info: ExportInfo | None,
        confirming: bool,
        shared_slot: HeldSlot,
    ) -> tuple[ExportRecord, list[PartRecord]]:
        """Poll an export (whose slot the caller holds) until DONE, aiming the polls at its
        likely end as past exports of the merchant and type tell it. The host's slot in
        the store goes back with the DONE, and the claim is confirmed and the parts saved
        of the export read, in the same store operation (ClaimLost if another process took
        the chunk over).

        DONE listing no files raises _NoFilesListed, unless `confirming` (the export before
        said the same): then the export is DONE with no files, an empty chunk.
        """
        timing = self._config.timing
        last_percent = record.percent
        last_progress = self._clock.now()
        # Re-attached (info None): its age includes time nobody watched it, maybe a whole
        # night, which says nothing of how long exports take; as a margin it could outgrow
        # the window and keep every export out for good.
        timed = info is not None
        host_name = state.host.region.name
        export_type = ExportType(chunk.type)
        expected = await self._durations.expected(
            host_name, chunk.merchant_id, export_type, chunk.range
        )
        polls = 0
        progress = ProgressRate(percent=record.percent)
        while True:
            if info is None or info.status not in DONE_STATUSES:
                now = self._clock.now()
                percent = info.percent if info is not None else record.percent
                progress.seen(self._clock.monotonic(), percent)
                measured_s = progress.elapsed_s(self._clock.monotonic())
                delay = next_poll_delay(
                    (now - record.created_at).total_seconds() if measured_s is None else measured_s,
                    percent,
                    timing.poll_min_s,
                    timing.poll_max_s,
                    expected_s=expected,
                    polls=polls,
                    predicted_max_s=timing.export_timeout_s,
                    measured=measured_s is not None and progress.trusted,
                )
                if not await self._nap(delay):
                    raise _Stopped
                info = await state.client.get_export(record.id)
                polls += 1
                get_logger().debug(
                    "export.polled",
                    export_id=record.id,
                    status=info.status,
                    percent=info.percent,
                    waited_s=round(delay, 3),
                )
            now = self._clock.now()
            if info.status in DONE_STATUSES:
                if not info.urls and not confirming:
                    listed = "no exportUrls" if info.urls is None else "an empty exportUrls"
                    raise _NoFilesListed(f"export {record.id} is {info.status} with {listed}")
                if timed:
                    seconds = (now - record.created_at).total_seconds()
                    state.host.gate.observe_duration(seconds)
                    self._observer.export_done(state.host.region.name, seconds)
                    # The server's own finish, when it says so, leaves out how late we saw it.
                    took_s = min(seconds, info.server_duration_s or seconds)
                    self._durations.observe(
                        host_name, chunk.merchant_id, export_type, chunk.range, took_s
                    )
                done, recorded = await self.lease.export_done(
                    chunk.id,
                    record.id,
                    info.available_until,
                    info.urls or (),
                    shared_slot.given_back(),
                )
                get_logger().info(
                    "export.done", export_id=record.id, files=len(info.urls or ()), polls=polls
                )
                return done, recorded
            if info.status not in RUNNING_STATUSES:
                raise ExportFailed(f"export {record.id} ended with status {info.status}")
            if info.percent != last_percent:
                last_percent, last_progress = info.percent, now
                await self._store.update_export(record.id, info.status, info.percent)
            elif now - last_progress > timedelta(seconds=timing.export_timeout_s):
                raise ExportFailed(
                    f"export {record.id} made no progress for {timing.export_timeout_s:g} s"
                )

    async def _nap(self, seconds: float) -> bool:
        return await nap(self._clock, seconds, self._stop)


def _first(errors: BaseExceptionGroup[StoreError]) -> StoreError:
    error: BaseException = errors
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, StoreError)
    return error
