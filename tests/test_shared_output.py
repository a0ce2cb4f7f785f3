"""One output folder, several processes: each stages in its own folders and touches no other's."""

from __future__ import annotations

from pathlib import Path

import pytest

from harvester.clover.chunks import ExportType, TimeRange
from harvester.output.folder import ChunkLook, ChunkOutput, recover
from tests.test_output import JANUARY, MERCHANT, export_file, listing, save_part, stage


def owned(tmp_path: Path, owner: str) -> ChunkOutput:
    return ChunkOutput(tmp_path / "out", MERCHANT, ExportType.PAYMENTS, JANUARY, owner=owner)


def test_staging_names_carry_the_owner(tmp_path: Path) -> None:
    """Two processes' staging folders of one chunk are different folders."""
    first, second = owned(tmp_path, "box-1-aa"), owned(tmp_path, "box-2-bb")
    assert first.staging_dir.name == f".staging-{JANUARY.name}@box-1-aa"
    assert first.staging_dir != second.staging_dir
    assert first.final_dir == second.final_dir


def test_an_owner_id_that_is_no_file_name_is_refused(tmp_path: Path) -> None:
    """An owner id must not carry a path into the folder name."""
    with pytest.raises(ValueError, match="owner id"):
        owned(tmp_path, "../x")


async def test_publishing_leaves_another_owners_staging_alone(tmp_path: Path) -> None:
    """A publish removes what its own staging should not hold, never another process's files."""
    first, second = owned(tmp_path, "box-1-aa"), owned(tmp_path, "box-2-bb")
    await save_part(second, 1, export_file(5, "b"))
    await first.publish(await stage(first, [export_file(3)]))
    assert listing(second.staging_dir) == {"part-00001.json"}
    assert not first.staging_dir.exists()


async def test_recover_touches_only_what_gone_owners_left(tmp_path: Path) -> None:
    """Start-up recovery deletes a gone owner's staging and keeps a live owner's untouched."""
    live, dead = owned(tmp_path, "box-1-aa"), owned(tmp_path, "box-2-bb")
    await save_part(live, 1, export_file(2))
    (live.staging_dir / ".part-00002.json.tmp").write_bytes(b"half")
    await save_part(dead, 1, export_file(2))
    touched = recover(tmp_path / "out", lambda *_: False, lambda owner: owner == "box-2-bb")
    assert touched == [dead.staging_dir]
    assert listing(live.staging_dir) == {"part-00001.json", ".part-00002.json.tmp"}


async def test_a_gone_owners_staging_is_adopted_with_its_parts(tmp_path: Path) -> None:
    """The new holder of a chunk takes over what a gone process staged, and reuses its parts."""
    dead, other_dead, alive = (owned(tmp_path, o) for o in ("box-2-bb", "box-3-cc", "box-4-dd"))
    mine = owned(tmp_path, "box-1-aa")
    info = await save_part(dead, 1, export_file(4))
    await save_part(other_dead, 1, export_file(9))
    await save_part(alive, 1, export_file(7))
    (dead.staging_dir / ".part-00002.json.tmp").write_bytes(b"half")
    adopted = await mine.adopt_staging({"box-2-bb", "box-3-cc"})
    assert adopted == str(dead.staging_dir)
    assert listing(mine.staging_dir) == {"part-00001.json"}
    assert await mine.saved_part(1, info.sha256)
    assert not other_dead.staging_dir.exists()
    assert listing(alive.staging_dir) == {"part-00001.json"}


async def test_a_staging_from_before_owners_counts_as_gone(tmp_path: Path) -> None:
    """A `.staging-<chunk>` without an owner (an older harvester's) is adopted too."""
    legacy = ChunkOutput(tmp_path / "out", MERCHANT, ExportType.PAYMENTS, JANUARY)
    info = await save_part(legacy, 1, export_file(3))
    mine = owned(tmp_path, "box-1-aa")
    assert await mine.adopt_staging(set()) == str(legacy.staging_dir)
    assert await mine.saved_part(1, info.sha256)


async def test_a_look_tells_whether_others_staged_the_chunk_and_what_is_published(
    tmp_path: Path,
) -> None:
    """`look` reports another owner's (or an owner-less) staging of the same chunk, never
    this process's own, and the manifest in place once the chunk is published."""
    mine, other = owned(tmp_path, "box-1-aa"), owned(tmp_path, "box-2-bb")
    assert await mine.look() == ChunkLook(published=None, staged_elsewhere=False)
    await save_part(mine, 1, export_file(2))
    assert not (await mine.look()).staged_elsewhere  # its own staging
    await save_part(other, 1, export_file(3))
    assert (await mine.look()).staged_elsewhere
    published = await other.publish(await stage(other, [export_file(3)]))
    assert await mine.look() == ChunkLook(published=published, staged_elsewhere=False)
    legacy = ChunkOutput(tmp_path / "out", MERCHANT, ExportType.PAYMENTS, JANUARY)
    await save_part(legacy, 1, export_file(1))
    assert (await mine.look()).staged_elsewhere


async def test_a_look_counts_only_real_staging_folders_of_the_same_chunk(
    tmp_path: Path,
) -> None:
    """Another chunk's staging, a file or a link under a staging name, and staging inside
    a linked type folder are nothing to adopt."""
    mine, other = owned(tmp_path, "box-1-aa"), owned(tmp_path, "box-2-bb")
    type_dir = mine.final_dir.parent
    type_dir.mkdir(parents=True)
    february = TimeRange.from_ms(JANUARY.end_ms, JANUARY.end_ms + 28 * 86_400_000)
    (type_dir / f".staging-{february.name}@box-2-bb").mkdir()
    (type_dir / f".staging-{JANUARY.name}@box-3-cc").write_bytes(b"")
    (tmp_path / "elsewhere").mkdir()
    (type_dir / f".staging-{JANUARY.name}@box-4-dd").symlink_to(tmp_path / "elsewhere")
    assert await mine.look() == ChunkLook(published=None, staged_elsewhere=False)
    await save_part(other, 1, export_file(3))
    assert (await mine.look()).staged_elsewhere
    real = tmp_path / "real"
    type_dir.rename(real)
    type_dir.symlink_to(real)
    assert await mine.look() == ChunkLook(published=None, staged_elsewhere=False)
