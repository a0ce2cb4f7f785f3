"""`merchants_file`: merchants from a CSV or JSON Lines file, joined with `merchants:`; every
bad row refused with the file, the line and the key, before anything is created."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harvester.cli import main
from harvester.clover.chunks import ExportType
from harvester.config import Config, load_config
from harvester.errors import ConfigError

LOCAL = "regions: {local: {base_url: 'http://127.0.0.1:9', windows: always}}\n"
TOKEN = "tok-file-0123456789abcdef"


def load(tmp_path: Path, config: str, rows: str, name: str = "merchants.csv") -> Config:
    (tmp_path / name).write_text(rows)
    path = tmp_path / "config.yaml"
    path.write_text(config)
    return load_config(path, environ={"APP_TOKEN": TOKEN, "APP_REFRESH": TOKEN})


def test_csv_rows_read_as_merchants(tmp_path: Path) -> None:
    """Each CSV row is a merchant: an empty cell is an absent key, types are separated by
    spaces, ${VAR} reads the environment, and the path is the config folder's."""
    config = load(
        tmp_path,
        "merchants_file: merchants.csv\nregions: {eu: {client_id: APP}}\n",
        "id,region,types,start,token,refresh_token,client_id\n"
        "M1,us,PAYMENTS ORDERS,2024-01-01,${APP_TOKEN},,\n"
        "M2,eu,orders,,,${APP_REFRESH},\n"
        "\n"
        'M3,,"PAYMENTS",2024-02-01T10:00:00+02:00,tok-literal-0123456789,,\n',
    )
    first, second, third = config.merchants
    assert (first.id, first.region.name, first.types) == (
        "M1",
        "us",
        (ExportType.PAYMENTS, ExportType.ORDERS),
    )
    assert first.token is not None
    assert first.token.reveal() == TOKEN
    assert first.start == datetime(2024, 1, 1, tzinfo=UTC)
    assert (second.token, second.types, second.client_id) == (None, (ExportType.ORDERS,), "APP")
    assert second.refresh_token is not None
    assert (third.index, third.region.name, third.start) == (
        2,
        "us",
        datetime(2024, 2, 1, 8, tzinfo=UTC),
    )
    assert third.where == f"{tmp_path / 'merchants.csv'}:5"


def test_jsonl_rows_and_yaml_merchants_are_joined(tmp_path: Path) -> None:
    """A .jsonl file holds one JSON object per line (null is absent); `merchants:` come first,
    then the file's."""
    rows = [
        {"id": "F1", "token": "${APP_TOKEN}", "types": ["ORDERS"], "start": None},
        {"id": "F2", "region": "local", "token": "x"},
    ]
    config = load(
        tmp_path,
        LOCAL + f"merchants: [{{id: Y1, token: {TOKEN}}}]\nmerchants_file: merchants.jsonl\n",
        "".join(json.dumps(row) + "\n" for row in rows),
        name="merchants.jsonl",
    )
    assert [(m.index, m.id) for m in config.merchants] == [(0, "Y1"), (1, "F1"), (2, "F2")]
    assert config.merchants[1].types == (ExportType.ORDERS,)


def test_ten_thousand_rows_load(tmp_path: Path) -> None:
    """A file of 10,000 merchants loads every one of them, in order, with its settings."""
    lines = ["id,region,token,types"]
    lines += [f"M{n:08d},{'us' if n % 2 else 'eu'},tok-{n:020d},PAYMENTS" for n in range(10_000)]
    config = load(tmp_path, "merchants_file: merchants.csv\n", "\n".join(lines) + "\n")
    assert len(config.merchants) == 10_000
    assert [m.id for m in config.merchants] == [f"M{n:08d}" for n in range(10_000)]
    last = config.merchants[-1]
    assert last.token is not None
    assert (last.region.name, last.token.reveal(), last.types) == (
        "us",
        f"tok-{9999:020d}",
        (ExportType.PAYMENTS,),
    )
    assert last.where.endswith("merchants.csv:10001")


HEADER = "id,region,types,start,token\n"
GOOD_ROW = f"M1,us,PAYMENTS,2024-01-01,{TOKEN}\n"

# (what is wrong, the file's text, the line and key the message names)
BAD_ROWS = [
    ("bad id", HEADER + GOOD_ROW + f"../etc,us,,,{TOKEN}\n", ":3: id: '../etc' is not"),
    ("unknown region", HEADER + f"M1,mars,,,{TOKEN}\n", ":2: region: unknown region 'mars'"),
    (
        "unknown type",
        HEADER + f"M1,us,PAYMENTS REFUNDS,,{TOKEN}\n",
        ":2: types[1]: unknown type 'REFUNDS'",
    ),
    ("bad date", HEADER + f"M1,us,,2024-02-30,{TOKEN}\n", ":2: start: cannot read '2024-02-30'"),
    ("unknown column", "id,region,tokn\nM1,us,x\n", ":1: column 'tokn': unknown key"),
    ("short token", HEADER + "M1,us,,,short\n", ":2: token: shorter than 16 characters"),
    ("no token", HEADER + "M1,us,,,\n", ":2: needs a token or a refresh_token"),
    ("missing variable", HEADER + "M1,us,,,${NOPE}\n", ":2: token: environment variable NOPE"),
    ("duplicate in the file", HEADER + GOOD_ROW * 2, ":3: id: duplicate merchant id 'M1'"),
    ("cells missing", HEADER + "M1,us\n", ":2: 2 cells, but the header (line 1) has 5"),
    ("no id column", "region,token\nus,x\n", ":1: the header has no 'id' column"),
    ("column twice", "id,id\nM1,M1\n", ":1: column 'id' appears twice"),
    ("unclosed quote", HEADER + 'M1,"us\n', ":2: not CSV"),
]


@pytest.mark.parametrize(
    ("rows", "culprit"), [case[1:] for case in BAD_ROWS], ids=[case[0] for case in BAD_ROWS]
)
def test_bad_rows_are_refused_naming_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: str, culprit: str
) -> None:
    """Each bad row exits 2 naming the file, its line and the key; nothing is created, and
    no token is shown."""
    (tmp_path / "merchants.csv").write_text(rows)
    config = tmp_path / "config.yaml"
    config.write_text("merchants_file: merchants.csv\noutput_dir: data\nstate_path: state/s.db\n")
    code = main(["backfill", "--config", str(config), "--from", "2025-01-01", "--to", "2025-02-01"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{tmp_path / 'merchants.csv'}{culprit}" in err
    assert TOKEN not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "merchants.csv"]


def test_an_id_in_both_lists_names_both_places(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An id in `merchants:` and in the file exits 2 naming both places; nothing is created."""
    (tmp_path / "merchants.csv").write_text(HEADER + "M2,us,,," + TOKEN + "\n" + GOOD_ROW)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"merchants: [{{id: M0, token: {TOKEN}}}, {{id: M1, token: {TOKEN}}}]\n"
        "merchants_file: merchants.csv\n"
    )
    code = main(["backfill", "--config", str(config), "--from", "2025-01-01", "--to", "2025-02-01"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"harvester: error: {tmp_path / 'merchants.csv'}:3: id: duplicate merchant id 'M1' "
        "(also merchants[1])\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "merchants.csv"]


JSONL_REFUSALS = [
    ('{"id": "M1", "token": "' + TOKEN + '"\n', ":1: not JSON: Expecting ',' delimiter"),
    ('["M1"]\n', ":1: expected a JSON object, got list"),
    ('{"id": "M1", "id": "M2"}\n', ":1: key 'id' appears twice"),
    ('{"id": "M1", "tokn": "x"}\n', ":1: tokn: unknown key"),
    ('{"id": 5, "token": "' + TOKEN + '"}\n', ":1: id: expected text (quote it), got 5"),
    (
        '{"id": "M1", "token": "' + TOKEN + '", "types": "PAYMENTS"}\n',
        ":1: types: expected a list like [PAYMENTS",
    ),
]


@pytest.mark.parametrize(("rows", "culprit"), JSONL_REFUSALS)
def test_bad_jsonl_rows_are_refused(tmp_path: Path, rows: str, culprit: str) -> None:
    """A JSON Lines row that is not one object of known keys is refused at its line."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "merchants_file: m.jsonl\n", rows, name="m.jsonl")
    assert str(caught.value).startswith(f"{tmp_path / 'm.jsonl'}{culprit}")
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("m.txt", "id\nM1\n", "merchants_file: {path}: expected a .csv or .jsonl file"),
        ("m.csv", "", "merchants_file: {path}: holds no merchant"),
        ("m.csv", "id,token\n", "merchants_file: {path}: holds no merchant"),
        ("m.csv", "id\n\xff\n", "{path}:2: cannot read: not UTF-8 text"),
        ("m.csv", "id,token\nM1," + "x" * 5000 + "\n", "{path}:2: a cell is longer than 4096"),
        ("m.jsonl", '{"id": "' + "x" * 40000 + '"}\n', "{path}:1: longer than 32768 characters"),
    ],
)
def test_bad_files_are_refused(tmp_path: Path, name: str, text: str, expected: str) -> None:
    """A file of another kind, an empty one, or one that is not UTF-8 is refused by name."""
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"merchants_file: {name}\n", text, name="unused.csv")
    assert str(caught.value).startswith(expected.format(path=path))


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    """A merchants_file that does not exist is named."""
    path = tmp_path / "config.yaml"
    path.write_text("merchants_file: nowhere.csv\n")
    with pytest.raises(ConfigError, match=r"merchants_file: .*nowhere\.csv: no such file"):
        load_config(path, environ={})


def test_a_byte_order_mark_is_no_part_of_the_header(tmp_path: Path) -> None:
    """A spreadsheet's CSV starts with a byte-order mark: the first column is still `id`."""
    (tmp_path / "m.csv").write_bytes(b"\xef\xbb\xbfid,token\r\nM1," + TOKEN.encode() + b"\r\n")
    path = tmp_path / "config.yaml"
    path.write_text("merchants_file: m.csv\n")
    assert [m.id for m in load_config(path, environ={}).merchants] == ["M1"]


def test_a_folder_or_a_huge_file_is_refused(tmp_path: Path) -> None:
    """A folder in place of the file, or a file past 64 MiB, is refused before it is read."""
    (tmp_path / "folder.csv").mkdir()
    huge = tmp_path / "huge.csv"
    with huge.open("wb") as file:
        file.truncate(64 * 1024 * 1024 + 1)  # sparse: takes no disk
    path = tmp_path / "config.yaml"
    for name, problem in (("folder.csv", "is a folder"), ("huge.csv", "larger than 67108864")):
        path.write_text(f"merchants_file: {name}\n")
        with pytest.raises(ConfigError, match=f"merchants_file: .*{name}: {problem}"):
            load_config(path, environ={})
