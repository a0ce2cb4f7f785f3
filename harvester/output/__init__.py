"""Where harvested chunks land: the output folder, the bucket, staging, manifests, room.

May import: the ground modules, clover/ and config (never the state: the harvest joins them)."""
