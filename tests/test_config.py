from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harvester.clover.chunks import ExportType
from harvester.config import Config, RateLimits, Secret, Timing, load_config
from harvester.errors import ConfigError
from harvester.pacing.windows import BUILTIN_REGIONS, WindowTable

FULL_EXAMPLE = """\
output_dir: data
state_path: state/harvester.sqlite3
chunk_days: 30
timing: {poll_min_s: 2, poll_max_s: 60, backoff_base_s: 1, backoff_max_s: 300,
         export_timeout_s: 3600}
max_concurrent_downloads: 8
max_export_attempts: 3
lookback_days: 0
default_start: 2024-01-01
log_level: info
regions:
  local:
    base_url: http://127.0.0.1:8099
    windows: always
    max_concurrent_exports: 2
    client_id: APPID
    rate_limits: {token_requests_per_s: 16, token_concurrent: 5,
                  app_requests_per_s: 50, app_concurrent: 10}
merchants:
  - id: ABCDEF1234567
    region: us
    token: ${CLOVER_TOKEN_ABC}
    types: [PAYMENTS, ORDERS]
    start: 2023-01-01
  - id: REFRESH000001
    region: local
    refresh_token: ${CLOVER_REFRESH}
    client_id: OWNAPP
"""

ENV = {
    "CLOVER_TOKEN_ABC": "tok-abc-secret-0123456789",
    "CLOVER_REFRESH": "refresh-secret-0123456789",
}

# A minimal valid config, and a merchant entry to build refusals from.
MERCHANT = "merchants:\n  - {id: M1, token: plain-token-16ch}\n"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ={} if environ is None else environ)


def refusal(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, environ)
    return str(caught.value)


def test_full_example_loads(tmp_path: Path) -> None:
    """The documented example loads into the settings it spells out."""
    config = load(tmp_path, FULL_EXAMPLE, ENV)
    assert config.path == (tmp_path / "config.yaml").resolve()
    assert config.chunk_days == 30
    assert config.timing == Timing()
    assert config.max_concurrent_downloads == 8
    assert config.max_export_attempts == 3
    assert config.lookback_days == 0
    assert config.default_start == datetime(2024, 1, 1, tzinfo=UTC)
    assert config.log_level == "info"
    local = config.regions["local"]
    assert local.base_url == "http://127.0.0.1:8099"
    assert local.windows == WindowTable.always()
    assert local.max_concurrent_exports == 2
    assert local.client_id == "APPID"
    assert local.rate_limits == RateLimits()
    first, second = config.merchants
    assert (first.index, first.id, first.region.name) == (0, "ABCDEF1234567", "us")
    assert first.types == (ExportType.PAYMENTS, ExportType.ORDERS)
    assert first.token == Secret("tok-abc-secret-0123456789")
    assert first.refresh_token is None
    assert first.client_id is None
    assert first.start == datetime(2023, 1, 1, tzinfo=UTC)
    assert (second.index, second.region, second.token) == (1, local, None)
    assert second.refresh_token is not None
    assert second.refresh_token.reveal() == "refresh-secret-0123456789"
    assert second.client_id == "OWNAPP"
    assert second.start is None


def test_defaults(tmp_path: Path) -> None:
    """A config with one merchant gets the documented defaults for everything else."""
    config = load(tmp_path, MERCHANT)
    assert config.output_dir == tmp_path.resolve() / "data"
    assert config.state_path == tmp_path.resolve() / "state" / "harvester.sqlite3"
    assert config.chunk_days == 30
    assert config.timing == Timing()
    assert config.timing.window_margin_s is None
    assert (config.max_concurrent_downloads, config.max_export_attempts) == (8, 3)
    assert config.state_pool_size == 4
    assert (config.lookback_days, config.default_start, config.log_level) == (0, None, "info")
    merchant = config.merchants[0]
    assert merchant.region.name == "us"
    assert merchant.types == (ExportType.PAYMENTS, ExportType.ORDERS)


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths are taken from the config file's folder, not the working directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    absolute_state = tmp_path / "abs" / "state.db"
    path = write(
        tmp_path,
        f"output_dir: ../out\nstate_path: {absolute_state}\n{MERCHANT}",
        name="conf/harvest.yaml",
    )
    config = load_config(Path("..") / "conf" / "harvest.yaml", environ={})
    assert config.path == path.resolve()
    assert config.path.is_absolute()
    assert config.output_dir == path.resolve().parent / ".." / "out"
    assert config.output_dir.is_absolute()
    assert config.state_path == absolute_state


def test_builtin_regions_with_documented_defaults(tmp_path: Path) -> None:
    """Without overrides the four built-in regions are there with the sheet's hosts and windows."""
    regions = load(tmp_path, MERCHANT).regions
    assert sorted(regions) == ["eu", "la", "sandbox", "us"]
    for name, builtin in BUILTIN_REGIONS.items():
        region = regions[name]
        assert (region.name, region.base_url, region.windows) == (
            name,
            builtin.base_url,
            builtin.windows,
        )
        assert region.max_concurrent_exports == 3
        assert region.client_id is None
        assert region.rate_limits == RateLimits()


def test_override_changes_only_the_keys_given(tmp_path: Path) -> None:
    """Overriding a built-in region changes the keys given and keeps every other one."""
    config = load(
        tmp_path,
        textwrap.dedent("""\
        regions:
          us:
            windows: ["every day 08:00-12:00"]
            rate_limits: {app_concurrent: 4, margin: 0.25}
          eu:
            max_concurrent_exports: 1
            client_id: EUAPP
        """)
        + MERCHANT,
    )
    us, eu = config.regions["us"], config.regions["eu"]
    assert us.base_url == "https://api.clover.com"
    assert us.windows.describe() == "every day 08:00-12:00"
    assert us.max_concurrent_exports == 3
    assert us.rate_limits == RateLimits(app_concurrent=4, margin=0.25)
    assert eu.base_url == "https://api.eu.clover.com"
    assert eu.windows == BUILTIN_REGIONS["eu"].windows
    assert (eu.max_concurrent_exports, eu.client_id) == (1, "EUAPP")
    assert config.regions["la"].windows == BUILTIN_REGIONS["la"].windows


def test_new_region_and_merchant_inheriting_its_client_id(tmp_path: Path) -> None:
    """A new region needs only a base_url; its merchants inherit its client_id."""
    config = load(
        tmp_path,
        """\
        regions:
          local: {base_url: "http://localhost:8099/", client_id: APP}
        merchants:
          - {id: M1, region: local, refresh_token: r1-token-16chars}
        """,
    )
    local = config.regions["local"]
    assert local.base_url == "http://localhost:8099"
    assert local.windows == WindowTable.always()
    assert config.merchants[0].region == local
    assert config.merchants[0].client_id == "APP"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.example.com", "https://api.example.com"),
        ("https://api.example.com/", "https://api.example.com"),
        ("HTTPS://api.example.com:8443", "https://api.example.com:8443"),
        ("http://127.0.0.1:8099", "http://127.0.0.1:8099"),
        ("http://127.10.0.3", "http://127.10.0.3"),
        ("http://[::1]:8099/", "http://[::1]:8099"),
        ("http://LOCALHOST:80", "http://LOCALHOST:80"),
    ],
)
def test_base_url_accepted(tmp_path: Path, url: str, expected: str) -> None:
    """https:// anywhere and http:// to loopback are accepted, without the trailing slash."""
    config = load(tmp_path, f"regions:\n  x: {{base_url: '{url}'}}\n{MERCHANT}")
    assert config.regions["x"].base_url == expected


def test_environment_substitution(tmp_path: Path) -> None:
    """${VAR} is filled in from the environment in tokens, client ids, URLs and paths."""
    config = load(
        tmp_path,
        """\
        output_dir: ${BASE}/out
        state_path: "${BASE}/state.db"
        regions:
          local: {base_url: "http://127.0.0.1:${PORT}", client_id: "${APP}"}
        merchants:
          - {id: M1, region: local, token: "Bearer-${TOKEN}-x"}
          - {id: M2, region: local, refresh_token: "${TOKEN}", client_id: "own-${APP}"}
        """,
        {"BASE": "/srv/harvest", "PORT": "8099", "APP": "APPID", "TOKEN": "t0k"},
    )
    assert config.output_dir == Path("/srv/harvest/out")
    assert config.state_path == Path("/srv/harvest/state.db")
    assert config.regions["local"].base_url == "http://127.0.0.1:8099"
    first, second = config.merchants
    assert (first.client_id, first.token) == ("APPID", Secret("Bearer-t0k-x"))
    assert (second.client_id, second.refresh_token) == ("own-APPID", Secret("t0k"))


def test_tokens_are_stripped(tmp_path: Path) -> None:
    """Whitespace around a token (a newline from a secrets file) is not part of it."""
    environ = {"T": " tok-0123456789abcdef\n"}
    config = load(tmp_path, "merchants: [{id: M1, token: '${T}'}]", environ)
    assert config.merchants[0].token == Secret("tok-0123456789abcdef")


def test_environ_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an explicit environ, ${VAR} reads os.environ."""
    monkeypatch.setenv("HARVESTER_TEST_TOKEN", "from-os-0123456789abcdef")
    config = load_config(write(tmp_path, "merchants: [{id: M1, token: '${HARVESTER_TEST_TOKEN}'}]"))
    assert config.merchants[0].token == Secret("from-os-0123456789abcdef")


def test_settings_are_read(tmp_path: Path) -> None:
    """Every timing and top-level setting given is the one used."""
    config = load(
        tmp_path,
        textwrap.dedent("""\
        chunk_days: 1
        max_concurrent_downloads: 2
        state_pool_size: 9
        max_export_attempts: 5
        lookback_days: 3
        default_start: "2024-06-01T12:00:00+02:00"
        log_level: DEBUG
        timing:
          poll_min_s: 0.5
          poll_max_s: 0.5
          poll_history: 0
          backoff_base_s: 2
          backoff_max_s: 4
          export_timeout_s: 10
          shutdown_grace_s: 1
          window_margin_s: 600
          request_timeout_s: 5
          max_attempts: 1
          export_cooldown_s: 7
          token_refresh_margin_s: 30
        """)
        + MERCHANT,
    )
    assert config.timing == Timing(
        poll_min_s=0.5,
        poll_max_s=0.5,
        poll_history=0,
        backoff_base_s=2,
        backoff_max_s=4,
        export_timeout_s=10,
        shutdown_grace_s=1,
        window_margin_s=600,
        request_timeout_s=5,
        max_attempts=1,
        export_cooldown_s=7,
        token_refresh_margin_s=30,
    )
    assert (config.chunk_days, config.max_concurrent_downloads) == (1, 2)
    assert config.state_pool_size == 9
    assert (config.max_export_attempts, config.lookback_days) == (5, 3)
    assert config.default_start == datetime(2024, 6, 1, 10, tzinfo=UTC)
    assert config.log_level == "debug"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2023-01-01", datetime(2023, 1, 1, tzinfo=UTC)),
        ("'2023-01-01'", datetime(2023, 1, 1, tzinfo=UTC)),
        ("2023-01-01T10:00:00Z", datetime(2023, 1, 1, 10, tzinfo=UTC)),
        ("2023-01-01T10:00:00-05:00", datetime(2023, 1, 1, 15, tzinfo=UTC)),
        ("'2023-01-01T10:00:00+01:00'", datetime(2023, 1, 1, 9, tzinfo=UTC)),
    ],
)
def test_merchant_start_accepts_dates_and_instants(
    tmp_path: Path, value: str, expected: datetime
) -> None:
    """A start may be a YAML date, a YAML timestamp with offset, or such a string; all are UTC."""
    text = f"merchants:\n  - {{id: M1, token: t-token-16-chars, start: {value}}}\n"
    config = load(tmp_path, text)
    assert config.merchants[0].start == expected
    assert config.merchants[0].start.tzinfo is UTC


def test_secret_hides_its_value() -> None:
    """A Secret never shows its value in repr or str, yet compares and hashes by value."""
    secret = Secret("hunter2")
    assert repr(secret) == "Secret('***')"
    assert str(secret) == "Secret('***')"
    assert f"{secret}" == "Secret('***')"
    assert "hunter2" not in repr([secret])
    assert secret.reveal() == "hunter2"
    assert secret == Secret("hunter2")
    assert secret != Secret("hunter3")
    assert secret != "hunter2"
    assert hash(secret) == hash(Secret("hunter2"))
    with pytest.raises(AttributeError):
        secret.extra = 1  # type: ignore[attr-defined]


def test_merchant_repr_hides_tokens(tmp_path: Path) -> None:
    """Printing the whole config shows no token."""
    config = load(tmp_path, FULL_EXAMPLE, ENV)
    shown = repr(config)
    assert "Secret('***')" in shown
    for secret in ENV.values():
        assert secret not in shown


@pytest.mark.parametrize(
    "text",
    [
        "merchants: [{id: M1, token: '${T}', tokn: '${T}'}]",
        "merchants: [{id: M1, token: '${T}', refresh_token: '${T}'}]",
        "merchants: [{id: M1, refresh_token: '${T}'}]",
        "merchants: [{id: M1, token: '${T}', types: ['${T}']}]",
        "merchants: [{id: M1, token: '${T}', region: '${T}'}]",
        "merchants: [{id: M1, token: '${T}', start: '${T}'}]",
        "merchants: [{id: '${T}', token: '${T}'}]",
        "merchants: ['${T}']",
        "merchants: '${T}'",
        "chunk_days: '${T}'\n" + MERCHANT,
        "log_level: '${T}'\n" + MERCHANT,
        "regions: '${T}'\n" + MERCHANT,
        "regions: {x: {base_url: 'http://${T}.example'}}\n" + MERCHANT,
        "regions: {x: {base_url: 'https://x.com/${T}'}}\n" + MERCHANT,
        "regions: {x: {base_url: 'https://x.com:${T}'}}\n" + MERCHANT,
        "regions: {x: {base_url: 'https://${T}@x.com'}}\n" + MERCHANT,
        "regions: {eu: {windows: ['${T}']}}\n" + MERCHANT,
        "timing: '${T}'\n" + MERCHANT,
        "merchants: [{id: M1, token: 'pre-${T}', tokn: x}]",
    ],
)
def test_error_messages_never_contain_the_secret(tmp_path: Path, text: str) -> None:
    """Whatever a config gets wrong, the message shows no value from the environment."""
    message = refusal(tmp_path, text, {"T": "s3cr3t-TOKEN-value"})
    assert "s3cr3t" not in message


def test_literal_tokens_are_not_echoed(tmp_path: Path) -> None:
    """A badly typed or malformed token written in the file is not echoed either."""
    assert "s3cr3t" not in refusal(tmp_path, "merchants: [{id: M1, token: [s3cr3t]}]")
    assert "s3cr3t" not in refusal(tmp_path, "merchants: [{id: M1, token: 's3cr3t${'}]")


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is named as given."""
    path = tmp_path / "nope" / "config.yaml"
    with pytest.raises(ConfigError, match=r"^.*config\.yaml: no such file$") as caught:
        load_config(path, environ={})
    assert str(caught.value) == f"{path}: no such file"


def test_unreadable_file(tmp_path: Path) -> None:
    """A path that cannot be read as a file is named as given."""
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={})
    assert str(caught.value).startswith(f"{tmp_path}: ")
    (tmp_path / "latin1.yaml").write_bytes(b"output_dir: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "latin1.yaml", environ={})
    assert str(caught.value) == f"{tmp_path / 'latin1.yaml'}: cannot read: not UTF-8 text"


def test_malformed_yaml_names_line_and_column(tmp_path: Path) -> None:
    """Invalid YAML is reported with its 1-based line and column."""
    path = write(tmp_path, "chunk_days: 30\nmerchants:\n  - id: M1\n  token: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(f"{path}: line 4, column 3: invalid YAML: ")


@pytest.mark.parametrize(("text", "got"), [("", "an empty file"), ("- 1\n- 2\n", "[1, 2]")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    """The top level must be a mapping of settings."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert (
        str(caught.value) == f"{path}: expected a mapping of settings at the top level, got {got}"
    )


def test_unknown_key_suggests_the_close_match(tmp_path: Path) -> None:
    """An unknown key lists the known ones and suggests the one it was likely meant to be."""
    text = (
        "merchants:\n  - {id: M0, token: a-token-16-chars}\n"
        "  - {id: M1, token: b-token-16-chars}\n  - {id: M2, tokn: c}\n"
    )
    assert refusal(tmp_path, text) == (
        "merchants[2].tokn: unknown key (expected one of: client_id, id, refresh_token, region, "
        "start, token, types); did you mean 'token'?"
    )
    assert refusal(tmp_path, "zzz: 1\n" + MERCHANT).endswith(
        "state_pool_size, state_url, timing, token_command, token_command_concurrency, "
        "token_command_timeout_s, token_command_ttl_s)"
    )


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    """A key given twice in one mapping is an error, not a silent override."""
    path = write(tmp_path, "merchants:\n  - id: M1\n    token: a\n    token: b\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value) == (
        f"{path}: line 4, column 5: invalid YAML: found duplicate key 'token'"
    )


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    """Settings shared with a YAML anchor and merge key may be overridden per merchant."""
    config = load(
        tmp_path,
        """\
        merchants:
          - &base {id: M1, token: t-token-16-chars, types: [ORDERS]}
          - {<<: *base, id: M2}
        """,
    )
    assert [(m.id, m.types) for m in config.merchants] == [
        ("M1", (ExportType.ORDERS,)),
        ("M2", (ExportType.ORDERS,)),
    ]


# (config text, how the message starts: always with the YAML path of the culprit)
REFUSALS = [
    # unknown keys, everywhere
    ("chunkdays: 3\n" + MERCHANT, "chunkdays: unknown key (expected one of: chunk_days, "),
    ("timing: {poll_mni_s: 1}\n" + MERCHANT, "timing.poll_mni_s: unknown key"),
    ("regions: {us: {base: x}}\n" + MERCHANT, "regions.us.base: unknown key"),
    (
        "regions: {us: {rate_limits: {app_rate: 1}}}\n" + MERCHANT,
        "regions.us.rate_limits.app_rate: unknown key",
    ),
    ("merchants: [{id: M1, token: t-token-16-chars, 5: x}]\n", "merchants[0].5: unknown key"),
    # wrong types and shapes
    ("chunk_days: abc\n" + MERCHANT, "chunk_days: expected a whole number, got 'abc'"),
    ("chunk_days: '30'\n" + MERCHANT, "chunk_days: expected a whole number, got '30'"),
    ("chunk_days: true\n" + MERCHANT, "chunk_days: expected a whole number, got True"),
    ("chunk_days: 2.5\n" + MERCHANT, "chunk_days: expected a whole number, got 2.5"),
    ("timing: {poll_min_s: fast}\n" + MERCHANT, "timing.poll_min_s: expected a number, got 'fast'"),
    ("timing: {poll_min_s: no}\n" + MERCHANT, "timing.poll_min_s: expected a number, got False"),
    ("timing: {poll_min_s: .nan}\n" + MERCHANT, "timing.poll_min_s: expected a number"),
    ("timing: {poll_max_s: .inf}\n" + MERCHANT, "timing.poll_max_s: expected a number"),
    ("timing: [1]\n" + MERCHANT, "timing: expected a mapping, got [1]"),
    ("regions: [us]\n" + MERCHANT, "regions: expected a mapping of region names"),
    ("regions: {us: 5}\n" + MERCHANT, "regions.us: expected a mapping, got 5"),
    ("regions: {'a b': {base_url: 'https://x'}}\n" + MERCHANT, "regions.a b: a region name is"),
    ("output_dir: 5\n" + MERCHANT, "output_dir: expected text, got 5"),
    ("output_dir: ''\n" + MERCHANT, "output_dir: must not be empty"),
    ("output_dir: '${EMPTY}'\n" + MERCHANT, "output_dir: is empty after reading the environment"),
    ("log_level: verbose\n" + MERCHANT, "log_level: expected one of debug, info, warning, error"),
    # the bucket
    (
        "output_dir: data\noutput_url: s3://bucket/p\n" + MERCHANT,
        "output_dir, output_url: give one of the two",
    ),
    ("object_store: {region: eu-west-1}\n" + MERCHANT, "object_store: only used with output_url"),
    ("output_url: gs://bucket/p\n" + MERCHANT, "output_url: expected s3://BUCKET"),
    ("output_url: s3:/bucket\n" + MERCHANT, "output_url: expected s3://BUCKET"),
    (
        "output_url: s3://Bucket_1/p\n" + MERCHANT,
        "output_url: the bucket in 's3://Bucket_1/p' is not a bucket name",
    ),
    ("output_url: 's3://AKIA:secret@bucket/p'\n" + MERCHANT, "output_url: must not carry"),
    ("output_url: s3://bucket/a/.hidden\n" + MERCHANT, "output_url: the prefix 'a/.hidden' has"),
    ("output_url: s3://bucket/a//b\n" + MERCHANT, "output_url: the prefix 'a//b' has"),
    ("output_url: s3://bucket/a*\n" + MERCHANT, "output_url: the prefix 'a*' has a"),
    (
        "output_url: s3://bucket\nobject_store: {endpoint: x}\n" + MERCHANT,
        "object_store.endpoint: unknown key",
    ),
    (
        "output_url: s3://bucket\nobject_store: {access_key_id: AKIA}\n" + MERCHANT,
        "object_store.secret_access_key: required with access_key_id",
    ),
    (
        "output_url: s3://bucket\nobject_store: {secret_access_key: s}\n" + MERCHANT,
        "object_store.access_key_id: required with secret_access_key",
    ),
    (
        "output_url: s3://bucket\nobject_store: {session_token: t}\n" + MERCHANT,
        "object_store.session_token: only with access_key_id and secret_access_key",
    ),
    (
        "output_url: s3://bucket\nobject_store: {endpoint_url: 'http://minio.lan:9000'}\n"
        + MERCHANT,
        "object_store.endpoint_url: http:// is only allowed to a loopback host",
    ),
    (
        "output_url: s3://bucket\nobject_store: {part_size_mib: 4}\n" + MERCHANT,
        "object_store.part_size_mib: must be 5..5120, got 4",
    ),
    (
        "output_url: s3://bucket\nobject_store: {region: 'us east'}\n" + MERCHANT,
        "object_store.region: not a region name",
    ),
    ("merchants: {id: M1}\n", "merchants: expected a list of merchants"),
    ("merchants: [M1]\n", "merchants[0]: expected a mapping"),
    ("merchants: [{id: M1, token: 5}]\n", "merchants[0].token: expected text, got a value of"),
    (
        "merchants: [{id: M1, token: t-token-16-chars, region: 5}]\n",
        "merchants[0].region: expected text, got 5",
    ),
    (
        "merchants: [{id: M1, token: t-token-16-chars, types: ORDERS}]\n",
        "merchants[0].types: expected a list",
    ),
    (
        "merchants: [{id: M1, token: t-token-16-chars, types: []}]\n",
        "merchants[0].types: expected a list",
    ),
    # environment
    (
        "merchants:\n"
        + "".join(f"  - {{id: M{i}, token: a-token-16-chars}}\n" for i in range(3))
        + "  - {id: M3, token: '${CLOVER_T3}'}\n",
        "merchants[3].token: environment variable CLOVER_T3 is not set",
    ),
    (
        "regions: {x: {base_url: 'https://${HOST}'}}\n" + MERCHANT,
        "regions.x.base_url: environment variable HOST is not set",
    ),
    ("merchants: [{id: M1, token: '${BAD NAME}'}]\n", "merchants[0].token: a '${' must start"),
    ("merchants: [{id: M1, token: 'ab${'}]\n", "merchants[0].token: a '${' must start"),
    ("merchants: [{id: M1, token: '${EMPTY}'}]\n", "merchants[0].token: the token is empty"),
    ("merchants: [{id: M1, token: '  '}]\n", "merchants[0].token: the token is empty"),
    (
        "merchants: [{id: M1, refresh_token: ''}]\n",
        "merchants[0].refresh_token: the token is empty",
    ),
    # regions and types
    (
        "regions: {local: {base_url: 'http://127.0.0.1:1'}}\n"
        "merchants: [{id: M1, token: t-token-16-chars, region: mars}]\n",
        "merchants[0].region: unknown region 'mars' (known: eu, la, local, sandbox, us)",
    ),
    (
        "merchants: [{id: M1, token: t-token-16-chars, types: [PAYMENTS, REFUNDS]}]\n",
        "merchants[0].types[1]: unknown type 'REFUNDS' (expected PAYMENTS or ORDERS)",
    ),
    (
        "merchants: [{id: M1, token: t-token-16-chars, types: [ORDERS, 7]}]\n",
        "merchants[0].types[1]: unknown type 7 (expected PAYMENTS or ORDERS)",
    ),
    (
        "merchants: [{id: M1, token: t-token-16-chars, types: [ORDERS, orders]}]\n",
        "merchants[0].types[1]: duplicate type 'orders'",
    ),
    # merchant ids
    (
        "merchants:\n"
        "  - {id: M0, token: a-token-16-chars}\n  - {id: ABC, token: a-token-16-chars}\n"
        "  - {id: B1, token: a-token-16-chars}\n"
        "  - {id: B2, token: a-token-16-chars}\n  - {id: ABC, token: b-token-16-chars}\n",
        "merchants[4].id: duplicate merchant id 'ABC' (also merchants[1])",
    ),
    ("merchants: [{token: t-token-16-chars}]\n", "merchants[0].id: required"),
    (
        "merchants: [{id: 0123, token: t-token-16-chars}]\n",
        "merchants[0].id: expected text (quote it), got 83",
    ),
    (
        "merchants: [{id: '../etc', token: t-token-16-chars}]\n",
        "merchants[0].id: '../etc' is not 1 to 64 ASCII",
    ),
    (
        "merchants: [{id: 'ÄBC', token: t-token-16-chars}]\n",
        "merchants[0].id: 'ÄBC' is not 1 to 64 ASCII",
    ),
    ("merchants: [{id: '" + "A" * 65 + "', token: t-token-16-chars}]\n", "merchants[0].id: 'AAAA"),
    (
        "merchants: [{id: '', token: t-token-16-chars}]\n",
        "merchants[0].id: '' is not 1 to 64 ASCII",
    ),
    # merchant list
    ("chunk_days: 3\n", "merchants: at least one merchant is required"),
    ("merchants: []\n", "merchants: at least one merchant is required"),
    ("merchants:\n", "merchants: at least one merchant is required"),
    # limits and durations
    (
        "regions: {us: {max_concurrent_exports: 0}}\n" + MERCHANT,
        "regions.us.max_concurrent_exports: must be at least 1, got 0",
    ),
    (
        "max_concurrent_downloads: 0\n" + MERCHANT,
        "max_concurrent_downloads: must be at least 1, got 0",
    ),
    ("state_pool_size: 0\n" + MERCHANT, "state_pool_size: must be 1..64, got 0"),
    ("state_pool_size: 65\n" + MERCHANT, "state_pool_size: must be 1..64, got 65"),
    ("state_pool_size: 2.5\n" + MERCHANT, "state_pool_size: expected a whole number, got 2.5"),
    ("max_export_attempts: -2\n" + MERCHANT, "max_export_attempts: must be at least 1, got -2"),
    ("timing: {max_attempts: 0}\n" + MERCHANT, "timing.max_attempts: must be at least 1, got 0"),
    ("timing: {poll_history: -1}\n" + MERCHANT, "timing.poll_history: must be at least 0, got -1"),
    (
        "regions: {eu: {rate_limits: {token_requests_per_s: 0.5}}}\n" + MERCHANT,
        "regions.eu.rate_limits.token_requests_per_s: must be at least 1, got 0.5",
    ),
    (
        "regions: {eu: {rate_limits: {token_concurrent: 0}}}\n" + MERCHANT,
        "regions.eu.rate_limits.token_concurrent: must be at least 1, got 0",
    ),
    (
        "regions: {eu: {rate_limits: {app_requests_per_s: 0}}}\n" + MERCHANT,
        "regions.eu.rate_limits.app_requests_per_s: must be at least 1, got 0",
    ),
    (
        "regions: {eu: {rate_limits: {margin: 1}}}\n" + MERCHANT,
        "regions.eu.rate_limits.margin: must be at least 0 and below 1, got 1",
    ),
    (
        "regions: {eu: {rate_limits: {margin: -0.1}}}\n" + MERCHANT,
        "regions.eu.rate_limits.margin: must be at least 0 and below 1, got -0.1",
    ),
    (
        "regions: {eu: {rate_limits: {app_concurrent: -1}}}\n" + MERCHANT,
        "regions.eu.rate_limits.app_concurrent: must be at least 1, got -1",
    ),
    ("chunk_days: 0\n" + MERCHANT, "chunk_days: must be 1..30, got 0"),
    ("chunk_days: 31\n" + MERCHANT, "chunk_days: must be 1..30, got 31"),
    ("lookback_days: -1\n" + MERCHANT, "lookback_days: must be at least 0, got -1"),
    (
        "timing: {export_timeout_s: 0}\n" + MERCHANT,
        "timing.export_timeout_s: must be more than 0 seconds, got 0",
    ),
    (
        "timing: {request_timeout_s: -5}\n" + MERCHANT,
        "timing.request_timeout_s: must be more than 0 seconds, got -5",
    ),
    (
        "timing: {window_margin_s: 0}\n" + MERCHANT,
        "timing.window_margin_s: must be more than 0 seconds, got 0",
    ),
    (
        "timing: {poll_min_s: 90}\n" + MERCHANT,
        "timing.poll_min_s: 90 is more than timing.poll_max_s (60)",
    ),
    (
        "timing: {backoff_base_s: 5, backoff_max_s: 4}\n" + MERCHANT,
        "timing.backoff_base_s: 5 is more than timing.backoff_max_s (4)",
    ),
    # base_url
    (
        "regions: {local: {base_url: 'http://example.com'}}\n" + MERCHANT,
        "regions.local.base_url: http:// is only allowed to a loopback host, "
        "got 'http://example.com'",
    ),
    (
        "regions: {local: {base_url: 'http://10.0.0.1:80'}}\n" + MERCHANT,
        "regions.local.base_url: http:// is only allowed to a loopback host",
    ),
    (
        "regions: {local: {base_url: 'http://localhost.example.com'}}\n" + MERCHANT,
        "regions.local.base_url: http:// is only allowed to a loopback host",
    ),
    (
        "regions: {local: {base_url: 'ftp://127.0.0.1'}}\n" + MERCHANT,
        "regions.local.base_url: expected an https:// URL",
    ),
    (
        "regions: {local: {base_url: 'api.clover.com'}}\n" + MERCHANT,
        "regions.local.base_url: expected an https:// URL",
    ),
    (
        "regions: {local: {base_url: 'https://'}}\n" + MERCHANT,
        "regions.local.base_url: expected an https:// URL",
    ),
    (
        "regions: {local: {base_url: 'https://x.com/v3'}}\n" + MERCHANT,
        "regions.local.base_url: expected only scheme, host and port",
    ),
    (
        "regions: {local: {base_url: 'https://x.com/?a=1'}}\n" + MERCHANT,
        "regions.local.base_url: expected only scheme, host and port",
    ),
    (
        "regions: {local: {base_url: 'https://x.com:99999'}}\n" + MERCHANT,
        "regions.local.base_url: cannot read 'https://x.com:99999' as a URL",
    ),
    (
        "regions: {local: {base_url: 'https://u:p@x.com'}}\n" + MERCHANT,
        "regions.local.base_url: must not carry a user name or password",
    ),
    (
        "regions: {local: {windows: always}}\n" + MERCHANT,
        "regions.local.base_url: required for a region that is not built in",
    ),
    # tokens and client ids
    ("merchants: [{id: M1}]\n", "merchants[0]: needs a token or a refresh_token"),
    (
        "merchants: [{id: M1, token: a-token-16-chars,"
        " refresh_token: b-token-16-chars, client_id: c}]\n",
        "merchants[0].refresh_token: give a token or a refresh_token, not both",
    ),
    (
        "merchants: [{id: M1, refresh_token: r-token-16-chars}]\n",
        "merchants[0].client_id: required with a refresh_token (set it here or on region 'us')",
    ),
    (
        "merchants: [{id: M1, token: t-token-16-chars, client_id: ''}]\n",
        "merchants[0].client_id: must not be",
    ),
    # windows and dates
    (
        "regions: {eu: {windows: ['Mon-Fri 01:00-05:00', 'Sat 2-5']}}\n" + MERCHANT,
        "regions.eu.windows[1]: cannot read 'Sat 2-5'; expected like 'Mon-Fri 01:00-05:00'",
    ),
    ("regions: {eu: {windows: []}}\n" + MERCHANT, "regions.eu.windows: expected 'always' or"),
    (
        "merchants: [{id: M1, token: t-token-16-chars, start: 2023-02-30}]\n",
        "merchants[0].start: cannot read '2023-02-30' as a date (YYYY-MM-DD) "
        "or an ISO-8601 instant with offset",
    ),
    (
        "merchants: [{id: M1, token: t-token-16-chars, start: 2023-01-01 10:00:00}]\n",
        "merchants[0].start: cannot read '2023-01-01 10:00:00' as a date",
    ),
    (
        "merchants: [{id: M1, token: t-token-16-chars, start: 5}]\n",
        "merchants[0].start: cannot read '5'",
    ),
    ("default_start: soon\n" + MERCHANT, "default_start: cannot read 'soon' as a date"),
]


@pytest.mark.parametrize(("text", "expected"), REFUSALS)
def test_refusals_name_the_culprit(tmp_path: Path, text: str, expected: str) -> None:
    """Each invalid config is a ConfigError whose message starts with the culprit's YAML path."""
    message = refusal(tmp_path, text, {"EMPTY": ""})
    assert message.startswith(expected), message


def test_output_url_and_object_store_are_read(tmp_path: Path) -> None:
    """output_url gives bucket and prefix; object_store keys come from ${VAR} as Secrets."""
    config = load(
        tmp_path,
        "output_url: s3://harvest-bucket/raw/clover/\n"
        "object_store:\n"
        "  endpoint_url: http://127.0.0.1:9000/\n"
        "  region: eu-west-1\n"
        "  access_key_id: ${S3_KEY}\n"
        "  secret_access_key: ${S3_SECRET}\n"
        "  session_token: ${S3_TOKEN}\n"
        "  part_size_mib: 16\n" + MERCHANT,
        {"S3_KEY": "AKIAEXAMPLE", "S3_SECRET": "very-secret", "S3_TOKEN": "session-secret"},
    )
    assert config.output_dir is None
    bucket = config.bucket
    assert bucket is not None
    assert (bucket.url, bucket.name, bucket.prefix) == (
        "s3://harvest-bucket/raw/clover",
        "harvest-bucket",
        "raw/clover",
    )
    assert (bucket.endpoint_url, bucket.region, bucket.part_size_mib) == (
        "http://127.0.0.1:9000",
        "eu-west-1",
        16,
    )
    assert bucket.access_key_id == Secret("AKIAEXAMPLE")
    assert bucket.secret_access_key == Secret("very-secret")
    assert bucket.session_token == Secret("session-secret")
    for secret in ("AKIAEXAMPLE", "very-secret", "session-secret"):
        assert secret not in repr(config)


def test_a_bucket_without_keys_leaves_them_to_the_standard_chain(tmp_path: Path) -> None:
    """Without object_store, or without keys in it, no credentials are set: botocore's
    chain (environment, profile, instance role) finds them."""
    config = load(tmp_path, "output_url: s3://harvest-bucket\n" + MERCHANT)
    assert config.bucket is not None
    assert config.bucket.prefix == ""
    assert config.bucket.access_key_id is None
    assert config.bucket.secret_access_key is None
    assert config.bucket.endpoint_url is None
