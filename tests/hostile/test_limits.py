"""Bounds in pure form: a part's size cap, a download's deadline, the output folder's room."""

from __future__ import annotations

import errno
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harvester.clover.chunks import ExportType, TimeRange
from harvester.config import Timing
from harvester.errors import FileTooLarge, OutputError
from harvester.harvest.downloader import CappedWriter, download_deadline_s
from harvester.output.folder import WRITE_BYTES, ChunkOutput
from harvester.output.room import FRESH_S, OutputRoom

RANGE = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 31, tzinfo=UTC))


async def test_a_part_never_grows_past_its_cap_on_disk(tmp_path: Path) -> None:
    """The write that would pass max_file_bytes raises FileTooLarge and writes nothing of it."""
    output = ChunkOutput(tmp_path, "M1", ExportType.ORDERS, RANGE)
    sizes: list[int] = []
    part = await output.open_part(1)
    temp = output.staging_dir / ".part-00001.json.tmp"
    # Pieces and a cap past WRITE_BYTES, so that what was written has reached the disk.
    piece = WRITE_BYTES // 4
    cap = 10 * piece
    async with part:
        capped = CappedWriter(part, cap, sizes.append)
        for _ in range(9):
            await capped.write(b"x" * piece)
        with pytest.raises(FileTooLarge, match="larger than max_file_bytes"):
            await capped.write(b"x" * (piece + 1))
        await capped.write(b"x" * piece)  # exactly the cap is allowed
        assert capped.size == cap
        assert sizes[-1] == cap
        with pytest.raises(FileTooLarge):
            await capped.write(b"x")
        assert 0 < temp.stat().st_size <= cap
    assert not temp.exists()  # left without a commit: deleted


@pytest.mark.parametrize(
    ("received", "expected_s"),
    [
        (0, 120.0),  # the floor
        (65_536, 121.0),  # one second more per download_min_bytes_per_s
        (65_536 * 1000, 1120.0),
        (10**12, 3600.0),  # never past the cap
    ],
)
def test_a_download_deadline_grows_with_its_size(received: int, expected_s: float) -> None:
    """floor + bytes / min rate, capped."""
    assert download_deadline_s(received, Timing()) == pytest.approx(expected_s)


def test_only_a_full_or_read_only_disk_ends_exports() -> None:
    """ENOSPC/EROFS end exports for the run (once); another write error does not."""
    room = OutputRoom(Path("/nowhere"), 0)
    assert not room.failed(OutputError("permission", errno=errno.EACCES))
    assert room.refusal() is None
    assert room.failed(OutputError("full", errno=errno.ENOSPC))
    assert not room.failed(OutputError("read-only", errno=errno.EROFS))  # not the first
    refusal = room.refusal()
    assert refusal is not None
    assert str(refusal) == "no export created: full"


def test_room_is_checked_by_writing_and_by_free_space(tmp_path: Path) -> None:
    """A writable folder with room passes; asking more room than the disk has fails."""
    OutputRoom(tmp_path / "data", 0).check()
    assert (tmp_path / "data").is_dir()
    assert not list((tmp_path / "data").iterdir())  # the probe is gone
    with pytest.raises(OutputError, match="bytes free, less than"):
        OutputRoom(tmp_path / "data", 2**62).check()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write"):
        OutputRoom(blocker, 0).check()


def test_room_probes_with_a_file_once_then_reads_the_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a run's first check makes a probe file; later ones read free space and the
    read-only flag, and a folder remounted read-only meanwhile is refused as EROFS."""
    probes: list[str] = []
    make_probe = tempfile.mkstemp

    def counted(*args: Any, **kwargs: Any) -> tuple[int, str]:
        descriptor, path = make_probe(*args, **kwargs)
        probes.append(path)
        return descriptor, path

    monkeypatch.setattr(tempfile, "mkstemp", counted)
    room = OutputRoom(tmp_path / "data", 0)
    for _ in range(3):
        room.check()
    assert len(probes) == 1
    real = os.statvfs(tmp_path)
    read_only = os.statvfs_result((*real[:8], real.f_flag | os.ST_RDONLY, real.f_namemax))
    monkeypatch.setattr(os, "statvfs", lambda path: read_only)
    with pytest.raises(OutputError, match=r"Read-only file system \(EROFS\)") as refused:
        room.check()
    assert refused.value.errno == errno.EROFS
    assert len(probes) == 1


def test_a_passed_room_check_stands_for_a_second_unless_more_room_is_needed(
    tmp_path: Path,
) -> None:
    """A check that passed at t is fresh until t + FRESH_S; a bigger chunk published, or a
    write that ended exports, asks for a check at once; a check that failed is never fresh."""
    room = OutputRoom(tmp_path / "data", 0)
    assert not room.fresh(100.0)
    room.check(100.0)
    assert room.fresh(100.0)
    assert room.fresh(100.0 + FRESH_S - 0.01)
    assert not room.fresh(100.0 + FRESH_S)
    room.check(200.0)
    room.published(10)
    assert not room.fresh(200.1)  # more room needed than at the check
    room.check(200.2)
    room.published(5)  # no bigger than the largest: the check stands
    assert room.fresh(200.3)
    room.failed(OutputError("full", errno=errno.ENOSPC))
    assert not room.fresh(200.4)
    with pytest.raises(OutputError, match="no export created: full"):
        room.check(200.5)
    assert not room.fresh(200.6)
    tight = OutputRoom(tmp_path / "data", 2**62)
    with pytest.raises(OutputError, match="bytes free, less than"):
        tight.check(300.0)
    assert not tight.fresh(300.1)
