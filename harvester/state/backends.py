"""Which state store a config names: SQLite at `state_path`, or PostgreSQL at `state_url`.

The PostgreSQL store (and psycopg) is imported only for a config with `state_url`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from urllib.parse import urlsplit

from harvester.clock import Clock, SystemClock
from harvester.config import Config
from harvester.scrub import register_secret
from harvester.state.records import Snapshot, StateStore
from harvester.state.sqlite import Store
from harvester.state.sqlite import read_export_durations as read_sqlite_durations
from harvester.state.sqlite import read_snapshot as read_sqlite_snapshot


def state_name(config: Config) -> str:
    """Where the state is, for messages (never a password)."""
    if config.state_url is not None:
        from harvester.state.postgres import safe_url

        return safe_url(config.state_url.reveal())
    return str(config.state_path)


def _url(config: Config) -> str:
    assert config.state_url is not None
    url = config.state_url.reveal()
    password = urlsplit(url).password
    if password:
        register_secret(password)
    return url


async def open_state(config: Config, clock: Clock) -> StateStore:
    """Open (creating and migrating if needed) the store the config names."""
    if config.state_url is not None:
        from harvester.state.postgres import PgStore

        return await PgStore.open(_url(config), clock, pool_size=config.state_pool_size)
    return await Store.open(config.state_path, clock)


def read_state(config: Config, now: datetime | None = None) -> Snapshot | None:
    """The state for `status` and `plan`, read only; None if there is none yet. With `now`,
    the claims of processes whose lease runs past it too.

    Synchronous: the CLI calls it outside any event loop.
    """
    if config.state_url is not None:
        from harvester.state.postgres import read_snapshot as read_pg_snapshot

        # The clock only stamps writes, and this only reads.
        return asyncio.run(read_pg_snapshot(_url(config), SystemClock(), now))
    if not config.state_path.exists():
        return None
    return read_sqlite_snapshot(config.state_path, now)


def export_durations(config: Config) -> list[float]:
    """Seconds from creation to DONE of the latest DONE exports, for `plan`'s estimate."""
    if config.state_url is not None:
        from harvester.state.postgres import read_export_durations as read_pg_durations

        return asyncio.run(read_pg_durations(_url(config)))
    return read_sqlite_durations(config.state_path)
