"""One merchant's line to Clover: its token, the host's rate limits, and the retry policy.

Transient failures (connection errors, timeouts, 5xx) are retried with capped exponential
backoff and full jitter, a bounded number of times. A 429 pauses the token or the whole
host, as its header says, for Retry-After (or a backoff). A 401 is answered by one token
refresh. Window and busy 503s are not retried here: the scheduler owns export slots and
windows, so they go straight up.

A 401 or 403 on creating an export is ambiguous: Clover answers 401 for a rejected token
and for a missing export permission alike. One cheap read with the same token tells them
apart: if Clover takes the token, the permission is missing (no refresh spent); if not, the
token is refreshed, at most once per merchant and run for this, and the create tried again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from harvester.clock import Clock, nap
from harvester.clover.api import CloverApi, ExportInfo
from harvester.clover.chunks import ExportType, TimeRange
from harvester.clover.ratelimit import RequestLimiter, Scope
from harvester.config import Timing
from harvester.errors import (
    AnswerLost,
    CloverUnavailable,
    CreateDenied,
    PermissionMissing,
    RateLimited,
    TokenRejected,
    Unavailable503,
)
from harvester.harvest.tokens import TokenSource
from harvester.logs import get_logger
from harvester.pacing.backoff import backoff_delay, retry_after_delay

T = TypeVar("T")

# 429s are Clover telling us to slow down, not a failure; still, a token that is refused
# this many times in a row is treated like any other failing operation.
MAX_RATE_LIMITED_IN_A_ROW = 50


class MerchantClient:
    def __init__(
        self,
        merchant_id: str,
        api: CloverApi,
        tokens: TokenSource,
        limiter: RequestLimiter,
        timing: Timing,
        clock: Clock,
        rng: random.Random,
        on_rate_limited: Callable[[str], None] = lambda scope: None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.merchant_id = merchant_id
        # A run stopping: a retry's backoff ends at once with the failure it waited on.
        self._stop = stop or asyncio.Event()
        self._on_rate_limited = on_rate_limited
        self._api = api
        self._tokens = tokens
        self._limiter = limiter
        self._timing = timing
        self._clock = clock
        self._rng = rng
        self._create_refresh_spent = False  # the one refresh a denied create may cost per run

    async def create_export(self, export_type: ExportType, span: TimeRange) -> ExportInfo:
        """One POST (after any 429 or 401 handling). Transient failures go to the caller,
        which re-checks the window and its slot before trying again.

        PermissionMissing or TokenRejected when Clover denies the create (see above).
        """

        async def call(token: str) -> ExportInfo:
            try:
                return await self._api.create_export(self.merchant_id, token, export_type, span)
            except CreateDenied as exc:
                try:
                    token_works = await self._api.token_reads_merchant(self.merchant_id, token)
                except AnswerLost as lost:
                    # A lost read created nothing: retried like any failed request.
                    raise CloverUnavailable(str(lost)) from lost
                if token_works:
                    raise PermissionMissing(
                        f"export permission missing: {exc} while the same token reads the merchant"
                    ) from exc
                raise TokenRejected(f"token rejected: {exc}, and so is a read") from exc

        return await self._call(call, retry_transient=False, create=True)

    async def get_export(self, export_id: str) -> ExportInfo:
        async def call(token: str) -> ExportInfo:
            return await self._api.get_export(self.merchant_id, token, export_id)

        return await self._call(call, retry_transient=True)

    async def _call(
        self, call: Callable[[str], Awaitable[T]], *, retry_transient: bool, create: bool = False
    ) -> T:
        failures = 0
        rate_limited = 0
        refreshed = False
        # A token Clover answered 401 to, and that answer: refresh before the next try.
        stale: tuple[str, TokenRejected] | None = None
        log = get_logger()
        while True:
            # A refresh (in get(), or after a 401) is an API call too: its 429s and transient
            # failures get the same policy, and a rejected refresh token is final (token stays
            # None).
            token: str | None = None
            try:
                if stale is not None:
                    if not await self._tokens.rejected(stale[0]):
                        raise stale[1]
                    stale = None
                token = await self._tokens.get()
                return await call(token)
            except RateLimited as exc:
                rate_limited += 1
                if rate_limited >= MAX_RATE_LIMITED_IN_A_ROW:
                    raise CloverUnavailable(f"rate limited {rate_limited} times in a row") from exc
                delay = retry_after_delay(
                    rate_limited - 1,
                    exc.retry_after_s,
                    self._timing.backoff_base_s,
                    self._timing.backoff_max_s,
                    self._rng,
                )
                # The limiter holds back every later request of the token (or host) too.
                self._limiter.pause(Scope(exc.scope), self.merchant_id, delay)
                log.warning("request.rate_limited", scope=exc.scope, wait_s=round(delay, 3))
                self._on_rate_limited(exc.scope)
                # Out of the limiter's line while paused, so that a run stopping meanwhile
                # ends the wait at once, with the failure it waited on.
                if not await nap(self._clock, delay, self._stop):
                    raise CloverUnavailable(f"rate limited ({exc.scope}); stopping") from exc
            except TokenRejected as exc:
                if token is None or refreshed or (create and self._create_refresh_spent):
                    raise
                refreshed = True
                self._create_refresh_spent |= create
                stale = (token, exc)
            except Unavailable503:
                raise
            except CloverUnavailable as exc:
                failures += 1
                if not retry_transient or failures >= self._timing.max_attempts:
                    raise
                delay = backoff_delay(
                    failures - 1, self._timing.backoff_base_s, self._timing.backoff_max_s, self._rng
                )
                log.warning(
                    "request.retry", error=str(exc), attempt=failures, wait_s=round(delay, 3)
                )
                if not await nap(self._clock, delay, self._stop):
                    raise
