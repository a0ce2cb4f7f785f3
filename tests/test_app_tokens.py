"""Harvests of merchants from a merchants_file with tokens from a token_command, against the
simulator on a fake clock; the commands are real subprocesses."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from harvester import commands
from harvester.clock import SystemClock
from harvester.clover.chunks import TimeRange
from harvester.harvest.planning import select
from harvester.harvest.summary import Summary
from harvester.simulator import Account, Faults, Simulator
from tests.apptokens import AppScenario, app_script, runs_of, token_of, tokens_script
from tests.conftest import DATA_START, NOW, merchant_ids, sim_settings
from tests.fakeclock import FakeClock
from tests.harness import assert_exactly_once, harvest, log_events
from tests.hostile.running import ONE_CHUNK, run_cli, run_here, written


async def backfill(scenario: AppScenario, clock: FakeClock, requested: TimeRange) -> Summary:
    config = scenario.config()
    return await commands.backfill(
        config, select(config, [], []), requested, clock, asyncio.Event()
    )


async def test_a_thousand_merchants_from_a_csv_file_with_tokens_from_a_script(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """1,000 merchants read from merchants.csv, each with the token its script prints: every
    object of the range is on disk exactly once, and the script ran once per merchant."""
    salt = secrets.token_hex(8)
    ids = merchant_ids(1000)
    tokens = {m: token_of(m, salt) for m in ids}
    requested = TimeRange(DATA_START, DATA_START + timedelta(days=2))
    settings = sim_settings(
        {m: Account(token=t) for m, t in tokens.items()},
        data_end=requested.end,  # small data: the simulator makes only what is asked
        objects_per_day=3.0,
        max_concurrent_exports=100,
        app_requests_per_s=1000,
        app_concurrent=100,
        pending_s=0.0,
        export_base_s=0.5,
    )
    async with Simulator(settings, clock, Faults()) as sim:
        scenario = AppScenario(
            tmp_path,
            sim,
            tokens,
            region={
                "max_concurrent_exports": 100,
                "rate_limits": {"app_requests_per_s": 1000, "app_concurrent": 100},
            },
            command=tokens_script(tmp_path, salt),
            types="PAYMENTS",
            extra_top={"token_command_ttl_s": 86400},  # the run lasts hours of virtual time
        )
        summary = await backfill(scenario, clock, requested)
        assert summary.exit_code == 0, summary.render()[-2000:]
        assert assert_exactly_once(scenario, requested) > 1000
        stats = sim.stats
    assert stats.bad_tokens == 0
    fetched = log_events(log_buffer, "token.fetched")
    assert sorted(event["merchant"] for event in fetched) == sorted(ids)


def answer(token: str, expires_at: datetime | None = None, **more: Any) -> dict[str, Any]:
    """What the app's script prints for a token (and `more`: err, code, sleep)."""
    document: dict[str, str] = {"access_token": token}
    if expires_at is not None:
        document["expires_at"] = expires_at.isoformat().replace("+00:00", "Z")
    return {"out": json.dumps(document), **more}


async def test_failing_commands_fail_their_merchant_only_and_no_token_shows(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """A command that exits 1, one that prints garbage, one that sleeps past its timeout, and
    one that gives back the token Clover just refused each fail their merchant, as said; a
    token that expires during the run, said or not, is asked for again; the other merchants
    are harvested exactly once; the run exits 1; and no token appears in the summary, the
    logs, `status`, the state or the output."""
    salt = secrets.token_hex(8)
    names = ["EXPIRING", "REVOKED", "SAME", "GOODA", "EXITS", "GARBAGE", "SLEEPS", "GOODB"]
    ids = {name: f"{name}M{n}" for n, name in enumerate(names)}
    token = {name: token_of(ids[name], salt) for name in ids}
    renewed = {name: token_of(ids[name], salt, generation=2) for name in ids}
    expiry = NOW + timedelta(seconds=60)
    month = NOW + timedelta(days=30)
    answers = {
        ids["EXPIRING"]: [answer(token["EXPIRING"], expiry), answer(renewed["EXPIRING"])],
        ids["REVOKED"]: [answer(token["REVOKED"]), answer(renewed["REVOKED"])],
        ids["SAME"]: [answer(token["SAME"])],
        ids["GOODA"]: [answer(token["GOODA"])],
        ids["GOODB"]: [answer(token["GOODB"], month)],
        # A token on stdout, said again on stderr, and exit 1.
        ids["EXITS"]: [
            answer(
                token["EXITS"],
                err=f"\nno grant for {token['EXITS']}, Bearer abc\nsecond line\n",
                code=1,
            )
        ],
        ids["GARBAGE"]: [{"out": token["GARBAGE"]}],  # the bare token, not JSON
        ids["SLEEPS"]: [{"err": "waiting for the database\n", "sleep": 60}],
    }
    accounts = {merchant: Account() for merchant in ids.values()}
    accounts[ids["GOODA"]] = Account(token=token["GOODA"])
    # More slots than merchants that get a token (five): slots go round-robin across
    # merchants, so each one's first token is asked for at the start. With two, which
    # merchants went first was a race, and EXPIRING, if it came third, asked for its first
    # token after the minute it lasts and was refused for it.
    slots = 6
    async with Simulator(
        sim_settings(accounts, max_concurrent_exports=slots), clock, Faults()
    ) as sim:
        # The app got these from Clover on its own; Clover ends some sooner than it said.
        sim.grant_access_token(ids["EXPIRING"], token["EXPIRING"], expiry)
        sim.grant_access_token(ids["REVOKED"], token["REVOKED"], NOW + timedelta(seconds=30))
        sim.grant_access_token(ids["SAME"], token["SAME"], NOW + timedelta(seconds=30))
        for name in ("EXPIRING", "REVOKED"):
            sim.grant_access_token(ids[name], renewed[name], month)
        sim.grant_access_token(ids["GOODB"], token["GOODB"], month)
        scenario = AppScenario(
            tmp_path,
            sim,
            dict.fromkeys(ids.values(), ""),
            command=app_script(tmp_path, answers),
            region={"max_concurrent_exports": slots},
            timing={"token_refresh_margin_s": 20},
            extra_top={"token_command_timeout_s": 1},
        )
        run = await harvest(scenario, clock)
        config_path = str(scenario.config_path())
    summary = run.summary
    assert summary.exit_code == 1
    refused = summary.refusals
    assert set(refused) == {ids[n] for n in ("SAME", "EXITS", "GARBAGE", "SLEEPS")}, refused
    assert refused[ids["SAME"]] == "token rejected"
    assert "app.py" in refused[ids["EXITS"]]
    assert refused[ids["EXITS"]].endswith(
        "exited with status 1; stderr: no grant for ***, Bearer ***"
    )
    assert "exited 0 but its output is not JSON" in refused[ids["GARBAGE"]]
    assert refused[ids["SLEEPS"]].endswith(
        "timed out after 1 s (killed); stderr: waiting for the database"
    )
    harvested = {ids[n] for n in ("EXPIRING", "REVOKED", "GOODA", "GOODB")}
    assert_exactly_once(scenario, besides=set(ids.values()) - harvested)
    # Asked again before the expiry it was told of (never sent after it), and after a 401.
    assert runs_of(tmp_path, ids["EXPIRING"]) == 2
    assert [
        sent.at
        for sent in run.requests.of(merchant=ids["EXPIRING"])
        if sent.authorization == f"Bearer {token['EXPIRING']}" and sent.at >= 60
    ] == []
    assert run.requests.of(merchant=ids["EXPIRING"], status=401) == []
    assert run.requests.of(merchant=ids["REVOKED"], status=401) != []
    assert runs_of(tmp_path, ids["REVOKED"]) == 2
    # A failed command is not run again for the other chunks of its merchant.
    for name in ("EXITS", "GARBAGE", "SLEEPS"):
        assert runs_of(tmp_path, ids[name]) == 1
    assert runs_of(tmp_path, ids["SAME"]) == 2
    status = run_here("status", "--config", config_path)
    assert status.code == 0, status.err
    assert "timed out after 1 s" in status.out
    shown = summary.render() + log_buffer.getvalue() + status.out + status.err
    stored = written(tmp_path / "state") + written(tmp_path / "data")
    for secret in [*token.values(), *renewed.values()]:
        assert secret not in shown
        assert secret.encode() not in stored


async def test_the_cli_exits_1_and_shows_no_token(tmp_path: Path) -> None:
    """Through the real command line: a merchant whose command fails is named in the summary
    with its command's error, the other is harvested, the exit code is 1, and no token is in
    stdout, stderr, `status`, the state or the output."""
    good, bad = "CLIGOODM1", "CLIEXITSM2"
    good_token = f"tok-{secrets.token_hex(12)}"
    command = app_script(
        tmp_path,
        {
            good: [answer(good_token)],
            bad: [answer(good_token + "x", err="denied: " + good_token + "x", code=1)],
        },
    )
    settings = sim_settings(
        {good: Account(token=good_token), bad: Account()},
        pending_s=0.05,
        export_base_s=0.2,
        export_per_object_s=0.0,
    )
    async with Simulator(settings, SystemClock(), Faults()) as sim:
        scenario = AppScenario(
            tmp_path,
            sim,
            {good: "", bad: ""},
            command=command,
            timing={"poll_min_s": 0.05, "poll_max_s": 0.5, "backoff_base_s": 0.05},
        )
        config = str(scenario.config_path())
        run = await run_cli("backfill", "--config", config, *ONE_CHUNK, "--log-level", "debug")
    status = run_here("status", "--config", config)
    assert run.code == 1, run.err
    assert f"{bad}: token_command " in run.out
    assert "exited with status 1; stderr: denied: ***" in run.out
    assert '"event": "chunk.completed"' in run.err
    assert '"event": "token.fetched"' in run.err
    assert "all requested work done" not in run.out
    shown = run.out + run.err + status.out
    stored = written(tmp_path / "state") + written(tmp_path / "data")
    for token in (good_token, good_token + "x"):
        assert token not in shown
        assert token.encode() not in stored
