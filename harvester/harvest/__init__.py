"""One chunk's life: planning, the scheduler, the downloader, host wiring, tokens, summary.

May import: the ground modules, clover/, pacing/, config, state/ and output/."""
