"""What surrounds a command's work: metrics, health pings, the live view, serve, status.

May import: every layer below cli but the simulator, commands included; only cli imports ops/."""
