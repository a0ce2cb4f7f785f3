"""The state's tables, written once; SQLite's and PostgreSQL's versioned migrations of them.

Each statement is written in one form with three words left open: `{id}` (a generated key),
`{big}` (a 64-bit integer: instants in milliseconds, sizes, counters) and `{real}`. The two
histories differ and stay as they shipped: SQLite grew in four versions (PRAGMA
user_version), PostgreSQL arrived with all of it in one (table schema_version); both then
took the same fifth and second: the indexes of the hot queries, and the same sixth and third:
the processes that use each host (their shares of Clover's limits) and what wakes them. Append
new versions to both; never edit one that has shipped: SQLite keeps each CREATE's text as
written.
"""

from __future__ import annotations

_SQLITE = {"id": "INTEGER PRIMARY KEY", "big": "INTEGER", "real": "REAL"}
_POSTGRES = {"id": "BIGSERIAL PRIMARY KEY", "big": "BIGINT", "real": "DOUBLE PRECISION"}

# Issue 7: creates whose answer was lost (orphans), counted per chunk.
_LOST_CREATES = "lost_creates INTEGER NOT NULL DEFAULT 0"
# Chunks and exports name each other: PostgreSQL adds the chunk's reference once both exist.
_CHUNKS = """
        CREATE TABLE chunks (
            id {id},
            merchant_id TEXT NOT NULL,
            type TEXT NOT NULL CHECK (type IN ('PAYMENTS', 'ORDERS')),
            start_ms {big} NOT NULL,
            end_ms {big} NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'exporting', 'downloading', 'complete', 'failed')),
            export_id TEXT{export_reference},
            exports_created INTEGER NOT NULL DEFAULT 0,
            completed_at_ms {big},
            last_error TEXT,
            last_error_at_ms {big},
            updated_at_ms {big} NOT NULL,{lost_creates}
            UNIQUE (merchant_id, type, start_ms, end_ms),
            CHECK (start_ms < end_ms)
        )
        """
_EXPORTS = """
        CREATE TABLE exports (
            id TEXT PRIMARY KEY,
            chunk_id {big} NOT NULL REFERENCES chunks (id),
            state TEXT NOT NULL
                CHECK (state IN ('running', 'done', 'failed', 'expired', 'lost')),
            status TEXT NOT NULL,
            percent {real} NOT NULL,
            created_at_ms {big} NOT NULL,
            updated_at_ms {big} NOT NULL,
            available_until_ms {big},
            urls TEXT NOT NULL DEFAULT '[]'{seq}
        )
        """
_HARVEST = (
    "CREATE INDEX exports_by_chunk ON exports (chunk_id)",
    """
        CREATE TABLE parts (
            export_id TEXT NOT NULL REFERENCES exports (id),
            part_index INTEGER NOT NULL CHECK (part_index >= 1),
            url_index INTEGER NOT NULL CHECK (url_index >= 0),
            size {big} NOT NULL CHECK (size >= 0),
            sha256 TEXT NOT NULL,
            objects INTEGER NOT NULL CHECK (objects >= 0),
            PRIMARY KEY (export_id, part_index)
        )
        """,
    """
        CREATE TABLE refresh_tokens (
            merchant_id TEXT PRIMARY KEY,
            token TEXT NOT NULL,
            expires_at_ms {big},
            updated_at_ms {big} NOT NULL
        )
        """,
)
_CLAIMS = (
    # Processes sharing the state, each with a lease it renews while it lives.
    """
        CREATE TABLE processes (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            machine TEXT NOT NULL,
            command TEXT NOT NULL,
            started_at_ms {big} NOT NULL,
            lease_until_ms {big} NOT NULL
        )
        """,
    # A chunk is worked on by the process holding its claim, while that one's lease runs.
    """
        CREATE TABLE claims (
            chunk_id {big} PRIMARY KEY REFERENCES chunks (id),
            owner TEXT NOT NULL REFERENCES processes (id),
            claimed_at_ms {big} NOT NULL
        )
        """,
    "CREATE INDEX claims_by_owner ON claims (owner)",
)
_SLOTS = (
    # One Clover host's export slots, shared by every process: the adaptive limit, the
    # busy backoff, and the order of grants (fairness between merchants).
    """
        CREATE TABLE hosts (
            host TEXT PRIMARY KEY,
            slot_limit INTEGER NOT NULL CHECK (slot_limit >= 1),
            run INTEGER NOT NULL DEFAULT 0,
            grants {big} NOT NULL DEFAULT 0,
            busy_until_ms {big}
        )
        """,
    """
        CREATE TABLE slots (
            id {id},
            host TEXT NOT NULL,
            owner TEXT NOT NULL REFERENCES processes (id),
            merchant_id TEXT NOT NULL,
            granted_at_ms {big} NOT NULL
        )
        """,
    "CREATE INDEX slots_by_host ON slots (host)",
    """
        CREATE TABLE slot_waiters (
            id {id},
            host TEXT NOT NULL,
            owner TEXT NOT NULL REFERENCES processes (id),
            merchant_id TEXT NOT NULL,
            since_ms {big} NOT NULL
        )
        """,
    """
        CREATE TABLE served (
            host TEXT NOT NULL,
            merchant_id TEXT NOT NULL,
            last_grant {big} NOT NULL,
            PRIMARY KEY (host, merchant_id)
        )
        """,
    # One refresh per merchant at a time, whichever process does it.
    """
        CREATE TABLE token_locks (
            merchant_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES processes (id),
            since_ms {big} NOT NULL
        )
        """,
)


# Issue 18: the hot queries at ten thousand merchants each use an index (tests/test_plans.py
# holds their plans): a chunk by its export (export_done, end_export), chunks by status
# (start_run, the DOWNLOADING ones a start keeps), a host's slot waiters in their order.
_HOT_INDEXES = (
    "CREATE INDEX chunks_by_export ON chunks (export_id)",
    "CREATE INDEX chunks_by_status ON chunks (status)",
    "CREATE INDEX slot_waiters_by_host ON slot_waiters (host, since_ms, id)",
)


# Issue 18: Clover's app limits hold for every process on a host together. Each process that
# works on a host is one of its users (its share of the budgets is one in as many as there
# are users whose lease runs; the row goes with the lease). An app-scope 429 one of them got
# pauses them all until `app_paused_until_ms`. `version` moves on with every change a waiter
# in another process may be waiting for (a slot given back, a backoff ended, a pause, a user
# come or gone): SQLite's processes poll it while they wait; PostgreSQL's are notified.
_HOST_USERS = (
    "ALTER TABLE hosts ADD COLUMN version {big} NOT NULL DEFAULT 0",
    "ALTER TABLE hosts ADD COLUMN app_paused_until_ms {big}",
    """
        CREATE TABLE host_users (
            host TEXT NOT NULL,
            owner TEXT NOT NULL REFERENCES processes (id),
            PRIMARY KEY (host, owner)
        )
        """,
    "CREATE INDEX host_users_by_owner ON host_users (owner)",
)


def _sqlite(*statements: str) -> tuple[str, ...]:
    words = {
        **_SQLITE,
        "export_reference": " REFERENCES exports (id)",
        "lost_creates": "",
        "seq": "",
    }
    return tuple(statement.format(**words) for statement in statements)


def _postgres(*statements: str) -> tuple[str, ...]:
    words = {
        **_POSTGRES,
        "export_reference": "",
        "lost_creates": f"\n            {_LOST_CREATES},",
        "seq": ",\n            seq BIGSERIAL",  # the order exports were recorded in
    }
    return tuple(statement.format(**words) for statement in statements)


SQLITE_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _sqlite(_CHUNKS, _EXPORTS, *_HARVEST),
    (f"ALTER TABLE chunks ADD COLUMN {_LOST_CREATES}",),
    _sqlite(*_CLAIMS),
    _sqlite(*_SLOTS),
    _HOT_INDEXES,
    _sqlite(*_HOST_USERS),
)

POSTGRES_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _postgres(
        _CHUNKS,
        _EXPORTS,
        "ALTER TABLE chunks ADD FOREIGN KEY (export_id) REFERENCES exports (id)",
        *_HARVEST,
        *_CLAIMS,
        *_SLOTS,
    ),
    _HOT_INDEXES,
    _postgres(*_HOST_USERS),
)
