"""The README's DuckDB recipe reads every harvested object of a merchant and type, once."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import duckdb

from harvester import commands
from harvester.clover.chunks import ExportType
from harvester.harvest.planning import select
from tests.conftest import Scenario, harvested, ids
from tests.fakeclock import FakeClock
from tests.harness import FULL

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLE_PATH = "data/ABCDEF1234567/payments"


def readme_sql() -> str:
    """The SQL block of the README's "Reading the output" section."""
    section = README.read_text().split("### Reading the output", 1)[1]
    match = re.search(r"```sql\n(.*?)```", section, re.S)
    assert match is not None, "the README has no SQL recipe"
    return match[1]


async def test_duckdb_recipe_counts_what_the_manifests_say(
    scenario: Scenario, clock: FakeClock
) -> None:
    """Run on a harvested output (with a staging leftover beside it), the README's query gives
    one row per object: as many as the manifests count, each id once."""
    config = scenario.config()
    summary = await commands.backfill(config, select(config, [], []), FULL, clock, asyncio.Event())
    assert summary.all_done
    merchant = next(iter(scenario.tokens))
    base = scenario.output_dir / merchant / ExportType.PAYMENTS.folder
    leftover = base / ".staging-20990101T000000Z_20990131T000000Z"
    leftover.mkdir()
    (leftover / "part-00001.json").write_text(json.dumps({"elements": [{"id": "STALE"}]}))

    query = readme_sql()
    assert EXAMPLE_PATH in query
    relation = duckdb.sql(query.replace(EXAMPLE_PATH, str(base)).rstrip().rstrip(";"))
    assert relation is not None
    rows = relation.fetchall()

    manifests = [json.loads(p.read_text()) for p in base.glob("[!.]*/_manifest.json")]
    assert len(manifests) > 1
    counted = sum(manifest["objects"] for manifest in manifests)
    assert len(rows) == counted > 0
    got = [row[0] for row in rows]
    assert len(set(got)) == len(got)
    assert "STALE" not in got
    assert sorted(got) == sorted(ids(harvested(scenario.output_dir, merchant, "payments")))
    assert json.loads(rows[0][1])["id"] == rows[0][0]
