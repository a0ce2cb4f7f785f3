"""The ways the simulator can play what is unknown of Clover, named apart from the server.

`harvester simulate --help` lists them without loading the server (and aiohttp's web).
"""

from __future__ import annotations

MAX_OBJECTS_PER_FILE = 1000
FILE_ENCODINGS = ("identity", "gzip", "deflate")
# What an export of a range without objects returns: one file of `{"elements": []}`, an
# empty `exportUrls.elements`, or no `exportUrls` at all.
EMPTY_EXPORTS = ("file", "no_elements", "no_urls")
PERMISSION_STATUSES = (401, 403)  # Clover's docs say 401; a 403 has been reported too
HEADER_CASES = ("canonical", "lower")  # lower: as Clover's docs print them, and HTTP/2 hops
FILE_HOSTS = ("separate", "api")  # files on their own host, or on the API host
DONE_STATUSES = ("DONE", "COMPLETE")  # COMPLETE: the name in Clover's 2016 docs
# What percentComplete says of a running export: a steady count (the work done, rounded
# down), none at all (0 until DONE), or a jumpy one (on every third second of the clock,
# 7 points under the steady count: a count that falls back now and then).
PROGRESS_COUNTS = ("steady", "none", "jumpy")
