"""Access tokens per merchant: a fixed one from the config, or one kept fresh by refreshing.

Clover's refresh tokens are single-use. The rotated refresh token is written to the state
store before the new access token is used, so a crash can never leave us holding only a
spent one; and one lock per merchant keeps a second refresh from spending it twice: an
asyncio lock within the process and, when other processes share the state, a lock in the
store around reading, spending and saving the stored token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from datetime import datetime, timedelta
from typing import Protocol

from harvester.clock import Clock
from harvester.clover.api import TokenGrant
from harvester.logs import get_logger
from harvester.scrub import register_secret
from harvester.state.records import StateStore


class TokenSource(Protocol):
    async def get(self) -> str:
        """A token to send now."""
        ...

    async def rejected(self, token: str) -> bool:
        """Clover answered 401 to `token`. True if a different token is now worth a try."""
        ...


class StaticToken:
    def __init__(self, token: str) -> None:
        register_secret(token)
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(***)"

    async def get(self) -> str:
        return self._token

    async def rejected(self, token: str) -> bool:
        return False


Refresher = Callable[[str], Awaitable[TokenGrant]]  # refresh token -> grant


class RefreshingToken:
    """Refreshes before `access_token_expiration` minus a margin, and once after a 401."""

    def __init__(
        self,
        merchant_id: str,
        configured_refresh_token: str,
        refresher: Refresher,
        store: StateStore,
        clock: Clock,
        margin_s: float,
        shared_lock: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        register_secret(configured_refresh_token)
        self._shared_lock = shared_lock or nullcontext
        self._merchant_id = merchant_id
        self._configured = configured_refresh_token
        self._refresher = refresher
        self._store = store
        self._clock = clock
        self._margin = timedelta(seconds=margin_s)
        self._lock = asyncio.Lock()
        self._access: str | None = None
        self._expires_at: datetime | None = None

    def __repr__(self) -> str:
        return f"RefreshingToken(merchant_id={self._merchant_id!r})"

    async def get(self) -> str:
        async with self._lock:
            if self._access is None or self._expiring():
                await self._refresh()
            assert self._access is not None
            return self._access

    async def rejected(self, token: str) -> bool:
        async with self._lock:
            if self._access is not None and token != self._access:
                return True  # another coroutine already refreshed while this one waited
            await self._refresh()
            return True

    def _expiring(self) -> bool:
        return self._expires_at is not None and self._clock.now() >= self._expires_at - self._margin

    async def _refresh(self) -> None:
        # Shielded: once the single-use token is spent, the answer must reach the store even
        # if this run is being cancelled.
        await asyncio.shield(self._refresh_and_store())

    async def _refresh_and_store(self) -> None:
        async with self._shared_lock():
            # Read under the lock: another process may have spent the token read before.
            await self._spend_stored()

    async def _spend_stored(self) -> None:
        stored = await self._store.refresh_token(self._merchant_id)
        current = stored[0] if stored is not None else self._configured
        register_secret(current)
        grant = await self._refresher(current)
        register_secret(grant.access_token)
        register_secret(grant.refresh_token)
        await self._store.save_refresh_token(
            self._merchant_id, grant.refresh_token, grant.refresh_expires_at
        )
        self._access = grant.access_token
        self._expires_at = grant.access_expires_at
        get_logger().info(
            "token.refreshed",
            merchant=self._merchant_id,
            access_expires_at=grant.access_expires_at.isoformat()
            if grant.access_expires_at
            else None,
        )
