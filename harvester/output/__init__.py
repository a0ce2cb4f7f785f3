"""Where harvested chunks land: the output folder, the bucket, staging, manifests, room.

May import: the ground modules, clover/, pacing/, config and state/."""
