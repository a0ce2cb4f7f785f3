"""When a request or an export may start: windows, host gates, slots, backoff, polling, orphans.

May import: the ground modules and clover/."""
