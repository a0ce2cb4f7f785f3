"""Room in the output folder: checked before an export is created, given up once it is gone.

An export holds one of a host's few slots for its whole run. Creating one whose files cannot
be written wastes the slot, so before each creation the folder must have room for a chunk:
`min_free_bytes`, plus the largest chunk this run has published, on a file system not
mounted read-only. The first check of a run also makes sure the folder takes a file (a
probe file made and deleted); later ones read the file system's figures only, because a
file made and deleted per export was a good part of an export's CPU: on a file system
without a journal, ext4 looks over every recently deleted inode when it allocates one.
A check that passed holds for `FRESH_S` (unless a bigger chunk was published since): at
dozens of exports a second, a thread job per export to read the same figures again cost
more than the figures can change in that time, and a write failing meanwhile is seen anyway.
Once a write fails because the file system is full or read-only, no more exports are
created for the rest of the run; downloads already under way finish if they can.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from harvester.errors import OutputError

# A write failing with one of these will fail the same way for every later chunk.
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT})
# How long a passed check stands for the next exports (seconds on the monotonic clock).
FRESH_S = 1.0


def output_error(exc: OSError, folder: Path | None = None) -> OutputError:
    """An OSError from writing the output, as the harvester's error naming file and cause."""
    code = exc.errno
    name = errno.errorcode.get(code, "") if code is not None else ""
    cause = f"{exc.strerror or exc}" + (f" ({name})" if name else "")
    where = "output folder" if folder is None else f"output folder {folder}"
    target = f" {exc.filename}" if exc.filename else ""
    return OutputError(f"{where}: cannot write{target}: {cause}", errno=code)


class OutputRoom:
    """One run's view of whether its output folder can take another chunk."""

    def __init__(self, folder: Path | None, min_free_bytes: int) -> None:
        self._folder = folder
        self._min_free_bytes = min_free_bytes
        self._largest_chunk = 0
        self._probed = False  # the folder has taken a file in this run
        self._passed_at: float | None = None  # monotonic: when the last check passed
        self.lost: OutputError | None = None  # the write failure that ended exports, if any

    def published(self, size: int) -> None:
        """A chunk of `size` bytes went into place: later ones may be as big."""
        if size > self._largest_chunk:
            self._largest_chunk = size
            self._passed_at = None  # the room needed grew: look again

    def failed(self, error: OutputError) -> bool:
        """A write failed. True if it is the first failure that ends exports for this run."""
        if self.lost is None and error.errno in NO_ROOM_ERRNOS:
            self.lost = error
            return True
        return False

    def refusal(self) -> OutputError | None:
        """Why no export may be created now, without touching the disk; None if none."""
        if self.lost is None:
            return None
        return OutputError(f"no export created: {self.lost}", errno=self.lost.errno)

    def fresh(self, now_s: float) -> bool:
        """True if a check passed less than FRESH_S before `now_s` (monotonic) and nothing
        since asks for another: the next export need not check (nor hop to a thread)."""
        return (
            self.lost is None
            and self._passed_at is not None
            and 0 <= now_s - self._passed_at < FRESH_S
        )

    def check(self, now_s: float | None = None) -> None:
        """OutputError if the folder cannot take a chunk now. Blocking: run it in a thread.

        The caller reports the error with `failed()`, as it does a failed write. `now_s`
        (monotonic): when the check was asked for; a pass then stays `fresh` for a while.
        """
        refusal = self.refusal()
        if refusal is not None:
            raise refusal
        if self._folder is None:
            return
        try:
            if not self._probed:
                self._folder.mkdir(parents=True, exist_ok=True)
                # A hidden name of its own: lanes check at the same time.
                descriptor, probe = tempfile.mkstemp(
                    prefix=".harvester-probe-", suffix=".tmp", dir=self._folder
                )
                os.close(descriptor)
                os.unlink(probe)
                self._probed = True
            stats = os.statvfs(self._folder)
            if stats.f_flag & os.ST_RDONLY:  # remounted read-only since (ext4 errors=remount-ro)
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self._folder))
        except OSError as exc:
            raise output_error(exc, self._folder) from exc
        free = stats.f_bavail * stats.f_frsize
        needed = self._min_free_bytes + self._largest_chunk
        if free < needed:
            raise OutputError(
                f"no export created: output folder {self._folder} has {free} bytes free, "
                f"less than the {needed} a chunk may need (min_free_bytes "
                f"{self._min_free_bytes} + the largest chunk so far {self._largest_chunk})",
                errno=errno.ENOSPC,
            )
        if now_s is not None:
            self._passed_at = now_s
