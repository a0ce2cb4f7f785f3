"""Clover's edge: the HTTP client, its export file format, body encodings, ranges, REST limits.

May import: the ground modules (errors, clock, scrub, logs) only."""
