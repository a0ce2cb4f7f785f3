"""What surrounds a command's work: metrics, health pings, the live view, serve, status.

May import: everything but cli (commands included); only cli imports ops/."""
