"""The durable state: records and protocol, SQLite and PostgreSQL, claims, shared slots.

May import: the ground modules, clover/, pacing/ and config."""
