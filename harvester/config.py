"""The YAML configuration: load it, check it, and hand out frozen settings.

Every refusal is a ConfigError whose message starts with the YAML path of the culprit
("merchants[2].token: ..."), and no message ever shows a token.
"""

from __future__ import annotations

import difflib
import hmac
import ipaddress
import math
import os
import re
import reprlib
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from harvester.clover.chunks import MAX_CHUNK_DAYS, ExportType, parse_instant
from harvester.errors import ConfigError
from harvester.merchants_file import merchant_rows, place
from harvester.pacing.windows import BUILTIN_REGIONS, WindowTable
from harvester.scrub import MIN_TOKEN_CHARS
from harvester.yaml_file import read_yaml

LOG_LEVELS = ("debug", "info", "warning", "error")

_MERCHANT_ID = re.compile(r"[A-Za-z0-9]{1,64}")
_REGION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A `${` that does not start a well-formed reference is matched too, to be refused.
_ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}|\$\{")
# PostgreSQL connections the state's transactions run on at once. Each is a backend process
# of the server: the most allowed is far more than a harvester's lanes need.
DEFAULT_STATE_POOL_SIZE = 4
MAX_STATE_POOL_SIZE = 64


class Secret:
    """A token. repr/str never show it: "Secret('***')". .reveal() returns the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself, only where it is used: an Authorization header, the S3 client,
        the store (refresh tokens)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Timing:
    poll_min_s: float = 2.0
    poll_max_s: float = 60.0
    # Export durations kept per merchant and type to aim polls at an export's likely end
    # (pacing/polling.py); 0: polls follow the progress alone.
    poll_history: int = 20
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    export_timeout_s: float = 3600.0  # a running export with no progress this long has failed
    shutdown_grace_s: float = 30.0
    window_margin_s: float | None = None  # None: the observed p90 export duration, at least 300 s
    request_timeout_s: float = 60.0  # every HTTP request
    max_attempts: int = 8  # per operation, for transient errors
    export_cooldown_s: float = 60.0  # the longest backoff before creating a failed export again
    token_refresh_margin_s: float = 300.0
    # How long a process's claims (chunks, export slots, token refreshes) outlive its last
    # heartbeat; another process takes them over after that. Renewed every third of it.
    lease_s: float = 60.0
    # A file download must average download_min_bytes_per_s after download_floor_s, and
    # never takes longer than download_cap_s: a body that trickles in has failed.
    download_floor_s: float = 120.0
    download_cap_s: float = 3600.0
    download_min_bytes_per_s: float = 64 * 1024


@dataclass(frozen=True, slots=True)
class RateLimits:
    token_requests_per_s: float = 16.0
    token_concurrent: int = 5
    app_requests_per_s: float = 50.0
    app_concurrent: int = 10
    # Aim this share below each rate (the limiter already counts each request from its start
    # until a second after its answer, as the server may count it anywhere in between).
    margin: float = 0.02


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    base_url: str  # no trailing slash
    windows: WindowTable
    max_concurrent_exports: int = 3
    client_id: str | None = None
    rate_limits: RateLimits = field(default_factory=RateLimits)


@dataclass(frozen=True, slots=True)
class Merchant:
    index: int  # position among the merchants (the YAML list's, then merchants_file's)
    id: str
    region: Region
    types: tuple[ExportType, ...]  # default (PAYMENTS, ORDERS), no duplicates
    # At most one of token / refresh_token; neither: the token comes from token_command.
    token: Secret | None
    refresh_token: Secret | None
    client_id: str | None  # merchant's own, else its region's; required with refresh_token
    start: datetime | None  # where `harvester run` starts when nothing is covered yet
    where: str = ""  # for messages: "merchants[3]", or "PATH:LINE" of a merchants_file row

    def path(self, key: str) -> str:
        """Where one of its keys was given: "merchants[3].start" or "PATH:LINE: start"."""
        return f"{self.where}.{key}" if self.where.endswith("]") else f"{self.where}: {key}"


@dataclass(frozen=True, slots=True)
class TokenCommand:
    """`token_command`: a program that prints a merchant's current access token (README)."""

    argv: tuple[str, ...] = field(repr=False)  # ${VAR} filled in: may hold a secret
    shown: str  # as written (${VAR} unread), for messages
    ttl_s: float = 3600.0  # how long a token is kept when the answer has no expires_at
    timeout_s: float = 30.0  # per run of the command
    concurrency: int = 4  # runs at once, over all merchants


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    textfile: Path | None = None  # absolute; rewritten atomically every interval_s and at exit
    interval_s: float = 15.0
    listen: tuple[str, int] | None = None  # (host, port) serving /metrics and /healthz


@dataclass(frozen=True, slots=True)
class Schedule:
    daily_at: time | None = None  # UTC time of day `harvester serve` starts a run


@dataclass(frozen=True, slots=True)
class Bucket:
    """Where `output_url: s3://BUCKET/PREFIX` lands the output, and how to reach it.

    Without credentials here the provider's standard chain applies (environment, profile,
    instance role). The three secrets never show in a repr.
    """

    url: str  # as checked: s3://bucket or s3://bucket/prefix, never a secret
    name: str
    prefix: str  # "" or path segments joined by "/", no leading or trailing slash
    endpoint_url: str | None  # an S3-compatible server; None: AWS for `region`
    region: str | None
    access_key_id: Secret | None
    secret_access_key: Secret | None
    session_token: Secret | None
    part_size_mib: int = 8  # multipart upload above this size, in parts of this size


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """Where `harvester load` puts the tables (the `load:` section)."""

    # duckdb, postgres, or the name of another dlt destination (configured through dlt's own
    # environment variables, e.g. DESTINATION__BIGQUERY__CREDENTIALS__PROJECT_ID).
    destination: str = "duckdb"
    duckdb_path: Path | None = None  # absolute; None: next to the output (see harvester/load)
    dsn: Secret | None = None  # postgres: postgresql://USER[:${VAR}]@HOST:PORT/DB
    dataset: str = "clover"  # the schema the tables go in
    after_run: bool = False  # `serve` loads after each night's run


@dataclass(frozen=True, slots=True)
class Config:
    path: Path  # the config file, absolute
    # Exactly one of the two: a folder (absolute; relative YAML paths resolve against the
    # config file's folder), or a bucket.
    output_dir: Path | None
    bucket: Bucket | None
    state_path: Path  # absolute, same rule; the SQLite state unless state_url is given
    chunk_days: int
    timing: Timing
    max_concurrent_downloads: int
    max_file_bytes: int  # a file larger than this has failed (an endless body fills no disk)
    min_free_bytes: int  # free space the output folder needs before an export is created
    max_export_attempts: int
    lookback_days: int
    default_start: datetime | None
    regions: Mapping[str, Region]  # built-ins merged with overrides
    merchants: tuple[Merchant, ...]
    log_level: str  # one of LOG_LEVELS
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    healthcheck_url: Secret | None = None  # a ping URL is a credential of sorts: never shown
    schedule: Schedule = field(default_factory=Schedule)
    # postgresql://USER[:PASSWORD]@HOST[:PORT]/DB: the state in PostgreSQL instead of
    # state_path (processes on several machines). A Secret: its password may be in it.
    state_url: Secret | None = None
    # PostgreSQL: connections the state's transactions run on at once (one more listens).
    state_pool_size: int = DEFAULT_STATE_POOL_SIZE
    token_command: TokenCommand | None = None  # for merchants without token or refresh_token
    load: LoadSettings = field(default_factory=LoadSettings)


_TOP_KEYS = (
    "output_dir",
    "output_url",
    "object_store",
    "state_path",
    "state_url",
    "state_pool_size",
    "chunk_days",
    "timing",
    "max_concurrent_downloads",
    "max_file_bytes",
    "min_free_bytes",
    "max_export_attempts",
    "lookback_days",
    "default_start",
    "log_level",
    "regions",
    "merchants",
    "metrics",
    "healthcheck_url",
    "schedule",
    "merchants_file",
    "token_command",
    "token_command_ttl_s",
    "token_command_timeout_s",
    "token_command_concurrency",
    "load",
)
_LOAD_KEYS = ("destination", "duckdb_path", "dsn", "dataset", "after_run")
_DESTINATION_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_DATASET_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_METRICS_KEYS = ("textfile", "interval_s", "listen")
_SCHEDULE_KEYS = ("daily_at",)
_TIMING_KEYS = tuple(item.name for item in fields(Timing))
_RATE_LIMIT_KEYS = tuple(item.name for item in fields(RateLimits))
_REGION_KEYS = ("base_url", "windows", "max_concurrent_exports", "client_id", "rate_limits")
_OBJECT_STORE_KEYS = (
    "endpoint_url",
    "region",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "part_size_mib",
)
# S3's rule for bucket names, less the dots (which break virtual-host addressing over TLS).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_MIN_PART_MIB = 5  # S3 refuses smaller multipart parts (but the last)
_MAX_PART_MIB = 5 * 1024
_MERCHANT_KEYS = ("id", "region", "token", "refresh_token", "client_id", "types", "start")
# Clover's files hold at most 1000 objects, a few megabytes: this is far above any of them.
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024
DEFAULT_MIN_FREE_BYTES = 64 * 1024 * 1024


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and check the YAML config at `path`; `environ` (default os.environ) fills ${VAR}."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else shown(raw)
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {got}")
    top = _Section(raw, "", _TOP_KEYS, os.environ if environ is None else environ)
    config_path = path.resolve()
    folder = config_path.parent
    regions = _read_regions(top)
    output_dir, bucket = _read_output(top, folder)
    state_url = _state_url(top)
    token_command = _read_token_command(top, folder)
    return Config(
        path=config_path,
        output_dir=output_dir,
        bucket=bucket,
        state_path=_path(top.env_text("state_path") or "state/harvester.sqlite3", folder),
        chunk_days=top.whole("chunk_days", 30, minimum=1, maximum=MAX_CHUNK_DAYS),
        timing=_read_timing(top.section("timing", _TIMING_KEYS)),
        max_concurrent_downloads=top.whole("max_concurrent_downloads", 8, minimum=1),
        max_file_bytes=top.whole("max_file_bytes", DEFAULT_MAX_FILE_BYTES, minimum=1024),
        min_free_bytes=top.whole("min_free_bytes", DEFAULT_MIN_FREE_BYTES, minimum=0),
        max_export_attempts=top.whole("max_export_attempts", 3, minimum=1),
        lookback_days=top.whole("lookback_days", 0, minimum=0),
        default_start=_instant(top.get("default_start"), "default_start"),
        regions=MappingProxyType(regions),
        merchants=_read_merchants(top, regions, folder, token_command is not None),
        log_level=_log_level(top.text("log_level")),
        metrics=_read_metrics(top.section("metrics", _METRICS_KEYS), folder),
        healthcheck_url=_healthcheck_url(top),
        schedule=_read_schedule(top.section("schedule", _SCHEDULE_KEYS)),
        state_url=state_url,
        state_pool_size=top.whole(
            "state_pool_size", DEFAULT_STATE_POOL_SIZE, minimum=1, maximum=MAX_STATE_POOL_SIZE
        ),
        token_command=token_command,
        load=_read_load(top.section("load", _LOAD_KEYS), folder),
    )


def _read_load(section: _Section, folder: Path) -> LoadSettings:
    """The `load:` section: the destination of `harvester load` and whether `serve` loads."""
    destination = (section.text("destination") or "duckdb").strip()
    if not _DESTINATION_NAME.fullmatch(destination):
        raise ConfigError(
            f"{section.path('destination')}: expected a dlt destination name like duckdb or "
            f"postgres, got {destination!r}"
        )
    if section.has("duckdb_path") and destination != "duckdb":
        raise ConfigError(f"{section.path('duckdb_path')}: only with destination: duckdb")
    duckdb_path = section.env_text("duckdb_path")
    dataset = (section.text("dataset") or LoadSettings().dataset).strip()
    if not _DATASET_NAME.fullmatch(dataset):
        raise ConfigError(
            f"{section.path('dataset')}: expected a schema name (lowercase letters, digits "
            f"and '_', not starting with a digit), got {dataset!r}"
        )
    after_run = section.get("after_run")
    if after_run is not None and not isinstance(after_run, bool):
        raise ConfigError(f"{section.path('after_run')}: expected true or false")
    return LoadSettings(
        destination=destination,
        duckdb_path=_path(duckdb_path, folder) if duckdb_path is not None else None,
        dsn=_load_dsn(section, destination),
        dataset=dataset,
        after_run=bool(after_run),
    )


def _load_dsn(section: _Section, destination: str) -> Secret | None:
    """load.dsn, required by and only with postgres; a password comes from ${VAR}."""
    where = section.path("dsn")
    if destination != "postgres":
        if section.has("dsn"):
            raise ConfigError(f"{where}: only with destination: postgres")
        return None
    written = section.text("dsn")
    if written is None:
        raise ConfigError(f"{where}: required with destination: postgres")
    # As for state_url: the text as written may be shown, what ${VAR} filled in never.
    parts = urlsplit(written)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"{where}: expected postgresql://USER@HOST:PORT/DB")
    if not parts.hostname or not parts.path.strip("/"):
        raise ConfigError(f"{where}: expected postgresql://USER@HOST:PORT/DB (host and database)")
    value = section.env_text("dsn")
    assert value is not None
    return Secret(value)


def _read_metrics(section: _Section, folder: Path) -> MetricsSettings:
    textfile = section.env_text("textfile")
    return MetricsSettings(
        textfile=_path(textfile, folder) if textfile is not None else None,
        interval_s=section.duration("interval_s", MetricsSettings().interval_s),
        listen=_listen(section),
    )


def _listen(section: _Section) -> tuple[str, int] | None:
    """ "HOST:PORT", "[::1]:PORT", or ":PORT" / a bare port (loopback, 127.0.0.1)."""
    where = section.path("listen")
    value = section.get("listen")
    if value is None:
        return None
    text = str(value).strip() if isinstance(value, int | str) else None
    if text is None or isinstance(value, bool):
        raise ConfigError(f"{where}: expected HOST:PORT, got {shown(value)}")
    host, colon, port_text = text.rpartition(":")
    if not colon:
        host, port_text = "", text
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{where}: expected HOST:PORT with a port 1..65535, got {text!r}")
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host.lower() != "localhost":
                raise ConfigError(
                    f"{where}: the host must be an IP address or localhost, got {host!r}"
                ) from None
    return (host or "127.0.0.1", int(port_text))


def _healthcheck_url(top: _Section) -> Secret | None:
    where = top.path("healthcheck_url")
    text = top.env_text("healthcheck_url")
    if text is None:
        return None
    # The URL itself is not shown: its path is what lets anyone ping the check.
    try:
        parts = urlsplit(text.strip())
        host = parts.hostname
        parts.port  # noqa: B018 -- reading it is what checks the port
    except ValueError:
        raise ConfigError(f"{where}: cannot read it as a URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host:
        raise ConfigError(f"{where}: expected an https:// URL with a host")
    if scheme == "http" and not _is_loopback(host):
        raise ConfigError(f"{where}: http:// is only allowed to a loopback host")
    if parts.query or parts.fragment or parts.username is not None:
        raise ConfigError(f"{where}: expected no query, fragment or user name")
    return Secret(text.strip().rstrip("/"))


def _read_schedule(section: _Section) -> Schedule:
    where = section.path("daily_at")
    value = section.get("daily_at")
    if value is None:
        return Schedule()
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 00:30 as the sexagesimal number 30.
        raise ConfigError(f'{where}: quote the time of day, like "00:30" (YAML read a number)')
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value.strip()) if isinstance(value, str) else None
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise ConfigError(f'{where}: expected a UTC time of day like "00:30", got {shown(value)}')
    return Schedule(time(int(match[1]), int(match[2])))


def _state_url(top: _Section) -> Secret | None:
    """state_url, checked; exactly one of state_path and state_url may be given."""
    if top.get("state_url") is None:
        return None
    if top.get("state_path") is not None:
        raise ConfigError(
            "state_path, state_url: give one of them, not both "
            "(state_path: a SQLite file; state_url: a PostgreSQL database)"
        )
    written = top.text("state_url")
    assert written is not None
    # The text as written is shown in messages; a password comes from ${VAR} (or PGPASSWORD).
    parts = urlsplit(written)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"state_url: expected postgresql://USER@HOST:PORT/DB, got scheme {parts.scheme!r}"
        )
    if not parts.hostname or not parts.path.strip("/"):
        raise ConfigError("state_url: expected postgresql://USER@HOST:PORT/DB (host and database)")
    value = top.env_text("state_url")
    assert value is not None
    return Secret(value)


def substitute(text: str, where: str, environ: Mapping[str, str]) -> str:
    """`text` with every ${VAR} replaced from `environ`."""

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name is None:
            # The text is not shown: it may be a token that merely contains "${".
            raise ConfigError(
                f"{where}: a '${{' must start a reference like ${{NAME}} "
                f"(letters, digits and underscores)"
            )
        value = environ.get(name)
        if value is None:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return value

    return _ENV_REFERENCE.sub(replace, text)


class _Section:
    """One YAML mapping being read: typed getters whose messages name the key's YAML path."""

    __slots__ = ("_environ", "_prefix", "_separator", "_values")

    def __init__(
        self,
        value: object,
        prefix: str,
        known: Sequence[str],
        environ: Mapping[str, str],
        separator: str = ".",  # ": " for a row of merchants_file: "PATH:LINE: key"
    ) -> None:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{prefix}: expected a mapping, got {shown(value)}")
        self._prefix = prefix
        self._separator = separator
        for key in value:
            if key not in known:
                raise ConfigError(_unknown_key(self.path(str(key)), str(key), known))
        self._values: dict[object, object] = value
        self._environ = environ

    def path(self, key: str) -> str:
        return f"{self._prefix}{self._separator}{key}" if self._prefix else key

    def get(self, key: str) -> object:
        """The value as written; None when the key is absent or null."""
        return self._values.get(key)

    def has(self, key: str) -> bool:
        return self.get(key) is not None

    def section(self, key: str, known: Sequence[str]) -> _Section:
        return self.within(self.get(key), self.path(key), known)

    def within(
        self, value: object, prefix: str, known: Sequence[str], separator: str = "."
    ) -> _Section:
        """A section for a mapping found inside this one, reading the same environment."""
        return _Section(value, prefix, known, self._environ, separator)

    def text(self, key: str) -> str | None:
        """Non-empty text as written."""
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{self.path(key)}: expected text, got {shown(value)}")
        if not value.strip():
            raise ConfigError(f"{self.path(key)}: must not be empty")
        return value

    def fill(self, text: str, where: str) -> str:
        """`text` (found at `where`) with ${VAR} filled in from the environment."""
        return substitute(text, where, self._environ)

    def env_text(self, key: str) -> str | None:
        """Non-empty text with ${VAR} references filled in from the environment.

        Only tokens, client ids, URLs and paths read the environment: other values are
        echoed in messages, which must never show a secret that came from there.
        """
        written = self.text(key)
        if written is None:
            return None
        value = substitute(written, self.path(key), self._environ)
        if not value.strip():
            raise ConfigError(f"{self.path(key)}: is empty after reading the environment")
        return value

    def secret(self, key: str) -> Secret | None:
        where = self.path(key)
        value = self.get(key)
        if value is None:
            return None
        # No message here shows the value: it is, or is meant to be, a token.
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got a value of type {type(value).__name__}")
        value = substitute(value, where, self._environ)
        if not value.strip():
            raise ConfigError(f"{where}: the token is empty")
        # Surrounding whitespace (a newline from a secrets file) is never part of a token.
        return Secret(value.strip())

    def whole(self, key: str, default: int, minimum: int, maximum: int | None = None) -> int:
        value = self.get(key)
        if value is None:
            return default
        where = self.path(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number, got {shown(value)}")
        number = value
        if maximum is not None and not minimum <= number <= maximum:
            raise ConfigError(f"{where}: must be {minimum}..{maximum}, got {number}")
        if number < minimum:
            raise ConfigError(f"{where}: must be at least {minimum}, got {number}")
        return number

    def number(self, key: str, default: float, minimum: float) -> float:
        """A number of at least `minimum` (a rate), or `default` when absent."""
        value = self._real(key)
        if value is None:
            return default
        if value < minimum:
            raise ConfigError(f"{self.path(key)}: must be at least {minimum:g}, got {value:g}")
        return value

    def fraction(self, key: str, default: float) -> float:
        """A number within 0..1, 1 excluded (a share), or `default` when absent."""
        value = self._real(key)
        if value is None:
            return default
        if not 0 <= value < 1:
            raise ConfigError(f"{self.path(key)}: must be at least 0 and below 1, got {value:g}")
        return value

    def duration(self, key: str, default: float) -> float:
        """A positive number of seconds, or `default` when absent."""
        value = self._real(key)
        if value is None:
            return default
        if value <= 0:
            raise ConfigError(f"{self.path(key)}: must be more than 0 seconds, got {value:g}")
        return value

    def _real(self, key: str) -> float | None:
        value = self.get(key)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(number := float(value))
        ):
            raise ConfigError(f"{self.path(key)}: expected a number, got {shown(value)}")
        return number


def _read_output(top: _Section, folder: Path) -> tuple[Path | None, Bucket | None]:
    """(output_dir, None) or (None, bucket): exactly one of `output_dir` and `output_url`."""
    if top.has("output_url"):
        if top.has("output_dir"):
            raise ConfigError(
                "output_dir, output_url: give one of the two (a folder or a bucket), not both"
            )
        return None, _read_bucket(top)
    if top.has("object_store"):
        raise ConfigError("object_store: only used with output_url: s3://BUCKET/PREFIX")
    return _path(top.env_text("output_dir") or "data", folder), None


def _read_bucket(top: _Section) -> Bucket:
    where = "output_url"
    text = top.env_text(where) or ""
    # Messages show the URL as written: what ${VAR} filled in stays out of them.
    shown = repr(top.get(where))
    scheme, found, rest = text.strip().partition("://")
    if not found or scheme.lower() != "s3":
        raise ConfigError(f"{where}: expected s3://BUCKET or s3://BUCKET/PREFIX, got {shown}")
    name, _, prefix = rest.partition("/")
    if "@" in name:
        # Not shown: what precedes the "@" would be a key.
        raise ConfigError(f"{where}: must not carry credentials (give them in object_store)")
    if not _BUCKET_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: the bucket in {shown} is not a bucket name (3 to 63 lowercase letters, "
            f"digits and '-', starting and ending with a letter or digit)"
        )
    prefix = prefix.strip("/")
    for segment in prefix.split("/") if prefix else []:
        if not segment or segment.startswith(".") or any(c in segment for c in "*?[]\\"):
            raise ConfigError(
                f"{where}: the prefix {prefix!r} has an empty, hidden ('.') or wildcard "
                f"segment {segment!r}"
            )
    section = top.section("object_store", _OBJECT_STORE_KEYS)
    access_key_id = section.secret("access_key_id")
    secret_access_key = section.secret("secret_access_key")
    session_token = section.secret("session_token")
    if (access_key_id is None) != (secret_access_key is None):
        missing = "secret_access_key" if secret_access_key is None else "access_key_id"
        raise ConfigError(
            f"{section.path(missing)}: required with "
            f"{'access_key_id' if missing == 'secret_access_key' else 'secret_access_key'} "
            f"(or give neither, for the provider's standard credential chain)"
        )
    if session_token is not None and access_key_id is None:
        raise ConfigError(
            f"{section.path('session_token')}: only with access_key_id and secret_access_key"
        )
    region = section.env_text("region")
    if region is not None and not _REGION_NAME.fullmatch(region.strip()):
        raise ConfigError(f"{section.path('region')}: not a region name like us-east-1")
    return Bucket(
        url=f"s3://{name}/{prefix}" if prefix else f"s3://{name}",
        name=name,
        prefix=prefix,
        endpoint_url=_base_url(section, "endpoint_url"),
        region=region.strip() if region is not None else None,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        session_token=session_token,
        part_size_mib=section.whole(
            "part_size_mib", 8, minimum=_MIN_PART_MIB, maximum=_MAX_PART_MIB
        ),
    )


def _read_timing(section: _Section) -> Timing:
    defaults = Timing()
    seconds = section.duration
    timing = Timing(
        poll_min_s=seconds("poll_min_s", defaults.poll_min_s),
        poll_max_s=seconds("poll_max_s", defaults.poll_max_s),
        poll_history=section.whole("poll_history", defaults.poll_history, minimum=0),
        backoff_base_s=seconds("backoff_base_s", defaults.backoff_base_s),
        backoff_max_s=seconds("backoff_max_s", defaults.backoff_max_s),
        export_timeout_s=seconds("export_timeout_s", defaults.export_timeout_s),
        shutdown_grace_s=seconds("shutdown_grace_s", defaults.shutdown_grace_s),
        window_margin_s=(
            seconds("window_margin_s", 0.0)
            if section.has("window_margin_s")
            else defaults.window_margin_s
        ),
        request_timeout_s=seconds("request_timeout_s", defaults.request_timeout_s),
        max_attempts=section.whole("max_attempts", defaults.max_attempts, minimum=1),
        export_cooldown_s=seconds("export_cooldown_s", defaults.export_cooldown_s),
        token_refresh_margin_s=seconds("token_refresh_margin_s", defaults.token_refresh_margin_s),
        lease_s=seconds("lease_s", defaults.lease_s),
        download_floor_s=seconds("download_floor_s", defaults.download_floor_s),
        download_cap_s=seconds("download_cap_s", defaults.download_cap_s),
        download_min_bytes_per_s=section.number(
            "download_min_bytes_per_s", defaults.download_min_bytes_per_s, minimum=1
        ),
    )
    for low, high in (
        ("poll_min_s", "poll_max_s"),
        ("backoff_base_s", "backoff_max_s"),
        ("download_floor_s", "download_cap_s"),
    ):
        low_value, high_value = getattr(timing, low), getattr(timing, high)
        if low_value > high_value:
            raise ConfigError(
                f"{section.path(low)}: {low_value:g} is more than "
                f"{section.path(high)} ({high_value:g})"
            )
    return timing


def _read_regions(top: _Section) -> dict[str, Region]:
    regions = {
        name: Region(name=name, base_url=builtin.base_url, windows=builtin.windows)
        for name, builtin in BUILTIN_REGIONS.items()
    }
    value = top.get("regions")
    if value is None:
        return regions
    if not isinstance(value, dict):
        raise ConfigError(f"regions: expected a mapping of region names, got {shown(value)}")
    for name, settings in value.items():
        where = f"regions.{name}"
        if not isinstance(name, str) or not _REGION_NAME.fullmatch(name):
            raise ConfigError(
                f"{where}: a region name is 1 to 64 ASCII letters, digits, '-' or '_'"
            )
        regions[name] = _read_region(name, top.within(settings, where, _REGION_KEYS), regions)
    return regions


def _read_region(name: str, section: _Section, regions: Mapping[str, Region]) -> Region:
    """Region `name` with the keys in `section` changed; a new region needs a base_url."""
    base_url = _base_url(section, "base_url")
    base = regions.get(name)
    if base is None:
        if base_url is None:
            raise ConfigError(
                f"{section.path('base_url')}: required for a region that is not built in "
                f"(built in: {', '.join(sorted(BUILTIN_REGIONS))})"
            )
        # A new host's window is unknown; its 503s say when it is closed.
        base = Region(name=name, base_url=base_url, windows=WindowTable.always())
    limits = section.section("rate_limits", _RATE_LIMIT_KEYS)
    old_limits = base.rate_limits
    return Region(
        name=name,
        base_url=base_url or base.base_url,
        windows=(
            WindowTable.parse(section.get("windows"), section.path("windows"))
            if section.has("windows")
            else base.windows
        ),
        max_concurrent_exports=section.whole(
            "max_concurrent_exports", base.max_concurrent_exports, minimum=1
        ),
        client_id=section.env_text("client_id") or base.client_id,
        rate_limits=RateLimits(
            token_requests_per_s=limits.number(
                "token_requests_per_s", old_limits.token_requests_per_s, minimum=1
            ),
            token_concurrent=limits.whole(
                "token_concurrent", old_limits.token_concurrent, minimum=1
            ),
            app_requests_per_s=limits.number(
                "app_requests_per_s", old_limits.app_requests_per_s, minimum=1
            ),
            app_concurrent=limits.whole("app_concurrent", old_limits.app_concurrent, minimum=1),
            margin=limits.fraction("margin", old_limits.margin),
        ),
    )


def _base_url(section: _Section, key: str) -> str | None:
    """A server's URL (a region's base_url, say) checked, without its trailing slash; None
    if not given."""
    where = section.path(key)
    text = section.env_text(key)
    if text is None:
        return None
    # Messages show the URL as written: what ${VAR} filled in stays out of them.
    shown = repr(section.get(key))
    try:
        parts = urlsplit(text.strip())
        host = parts.hostname
        parts.port  # noqa: B018 -- reading it is what checks the port
    except ValueError:
        raise ConfigError(f"{where}: cannot read {shown} as a URL") from None
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{where}: must not carry a user name or password")
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host:
        raise ConfigError(f"{where}: expected an https:// URL with a host, got {shown}")
    if scheme == "http" and not _is_loopback(host):
        raise ConfigError(f"{where}: http:// is only allowed to a loopback host, got {shown}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{where}: expected only scheme, host and port, got {shown}")
    return f"{scheme}://{parts.netloc}"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_merchants(
    top: _Section, regions: Mapping[str, Region], folder: Path, has_command: bool
) -> tuple[Merchant, ...]:
    """`merchants:` then `merchants_file:` rows, joined; an id may appear only once."""
    value = top.get("merchants")
    if not isinstance(value, list | None):
        raise ConfigError(f"merchants: expected a list of merchants, got {shown(value)}")
    loopback = {
        name: _is_loopback(urlsplit(region.base_url).hostname or "")
        for name, region in regions.items()
    }
    first_place: dict[str, str] = {}
    merchants: list[Merchant] = []

    def add(where: str, section: _Section) -> None:
        merchant = _read_merchant(len(merchants), where, section, regions, loopback, has_command)
        if merchant.id in first_place:
            raise ConfigError(
                f"{merchant.path('id')}: duplicate merchant id {merchant.id!r} "
                f"(also {first_place[merchant.id]})"
            )
        first_place[merchant.id] = where
        merchants.append(merchant)

    for index, item in enumerate(value or []):
        where = f"merchants[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(
                f"{where}: expected a mapping with an id and a token, got {shown(item)}"
            )
        add(where, top.within(item, where, _MERCHANT_KEYS))
    written = top.env_text("merchants_file")
    if written is not None:
        path = _path(written, folder)
        before = len(merchants)
        with merchant_rows(path) as (header, rows):
            if header is not None:
                _check_header(path, header.line, header.columns)
            for row in rows:
                where = place(path, row.line)
                add(where, top.within(row.values, where, _MERCHANT_KEYS, separator=": "))
        if len(merchants) == before:
            raise ConfigError(f"merchants_file: {path}: holds no merchant")
    if not merchants:
        raise ConfigError("merchants: at least one merchant is required (or give merchants_file)")
    return tuple(merchants)


def _check_header(path: Path, line: int, columns: Sequence[str]) -> None:
    where = place(path, line)
    for number, name in enumerate(columns):
        if name not in _MERCHANT_KEYS:
            raise ConfigError(_unknown_key(f"{where}: column {shown(name)}", name, _MERCHANT_KEYS))
        if name in columns[:number]:
            raise ConfigError(f"{where}: column {name!r} appears twice")
    if "id" not in columns:
        raise ConfigError(f"{where}: the header has no 'id' column")


def _read_merchant(
    index: int,
    where: str,
    section: _Section,
    regions: Mapping[str, Region],
    loopback: Mapping[str, bool],
    has_command: bool,
) -> Merchant:
    merchant_id = _merchant_id(section)
    region_name = section.text("region") or "us"
    if region_name not in regions:
        raise ConfigError(
            f"{section.path('region')}: unknown region {region_name!r} "
            f"(known: {', '.join(sorted(regions))})"
        )
    region = regions[region_name]
    token = section.secret("token")
    refresh_token = section.secret("refresh_token")
    if token is None and refresh_token is None and not has_command:
        raise ConfigError(
            f"{where}: needs a token or a refresh_token "
            f"(or set token_command, to ask your app for merchants without either)"
        )
    if token is not None and refresh_token is not None:
        raise ConfigError(
            f"{section.path('refresh_token')}: give a token or a refresh_token, not both"
        )
    if not loopback[region_name]:
        for key, secret in (("token", token), ("refresh_token", refresh_token)):
            if secret is not None and len(secret.reveal()) < MIN_TOKEN_CHARS:
                raise ConfigError(
                    f"{section.path(key)}: shorter than {MIN_TOKEN_CHARS} characters, too short "
                    f"to be Clover's (short test tokens are accepted for loopback hosts only)"
                )
    client_id = section.env_text("client_id") or region.client_id
    if refresh_token is not None and client_id is None:
        raise ConfigError(
            f"{section.path('client_id')}: required with a refresh_token "
            f"(set it here or on region {region_name!r})"
        )
    return Merchant(
        index=index,
        id=merchant_id,
        region=region,
        types=_types(section),
        token=token,
        refresh_token=refresh_token,
        client_id=client_id,
        start=_instant(section.get("start"), section.path("start")),
        where=where,
    )


def _read_token_command(top: _Section, folder: Path) -> TokenCommand | None:
    """`token_command` and its settings; the program must exist and be executable now."""
    value = top.get("token_command")
    if value is None:
        for key in ("token_command_ttl_s", "token_command_timeout_s", "token_command_concurrency"):
            if top.has(key):
                raise ConfigError(f"{key}: only used with token_command")
        return None
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f"token_command: expected a list [PROGRAM, ARG...] (run without a shell), "
            f"got {shown(value)}"
        )
    argv: list[str] = []
    for number, item in enumerate(value):
        where = f"token_command[{number}]"
        if not isinstance(item, str):
            raise ConfigError(f"{where}: expected text (quote it), got {shown(item)}")
        argv.append(top.fill(item, where))
    program = argv[0].strip()
    if not program:
        raise ConfigError("token_command[0]: the program must not be empty")
    if "/" in program:
        found = _path(program, folder)
        if not (found.is_file() and os.access(found, os.X_OK)):
            raise ConfigError(
                f"token_command[0]: {shown(value[0])}: no such executable file ({found})"
            )
        argv[0] = str(found)
    else:
        resolved = shutil.which(program)
        if resolved is None:
            raise ConfigError(f"token_command[0]: {shown(value[0])}: not found on PATH")
        argv[0] = resolved
    defaults = TokenCommand(argv=(), shown="")
    return TokenCommand(
        argv=tuple(argv),
        shown=written if len(written := shlex.join(value)) <= 200 else f"{written[:197]}...",
        ttl_s=top.duration("token_command_ttl_s", defaults.ttl_s),
        timeout_s=top.duration("token_command_timeout_s", defaults.timeout_s),
        concurrency=top.whole("token_command_concurrency", defaults.concurrency, minimum=1),
    )


def _merchant_id(section: _Section) -> str:
    where = section.path("id")
    value = section.get("id")
    if value is None:
        raise ConfigError(f"{where}: required")
    if not isinstance(value, str):
        # YAML reads 0123 as the number 83: a merchant id must be quoted if it looks like one.
        raise ConfigError(f"{where}: expected text (quote it), got {shown(value)}")
    if not _MERCHANT_ID.fullmatch(value):
        raise ConfigError(
            f"{where}: {value!r} is not 1 to 64 ASCII letters and digits (it names a folder)"
        )
    return value


def _types(section: _Section) -> tuple[ExportType, ...]:
    where = section.path("types")
    value = section.get("types")
    if value is None:
        return (ExportType.PAYMENTS, ExportType.ORDERS)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a list like [PAYMENTS, ORDERS], got {shown(value)}")
    types: list[ExportType] = []
    for i, item in enumerate(value):
        export_type = ExportType.__members__.get(item.upper()) if isinstance(item, str) else None
        if export_type is None:
            raise ConfigError(
                f"{where}[{i}]: unknown type {shown(item)} (expected PAYMENTS or ORDERS)"
            )
        if export_type in types:
            raise ConfigError(f"{where}[{i}]: duplicate type {shown(item)}")
        types.append(export_type)
    return tuple(types)


def _instant(value: object, where: str) -> datetime | None:
    """A start instant: YAML may already have made a date or datetime of it."""
    if value is None:
        return None
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    # A naive datetime or anything else goes to parse_instant to be refused in the usual words.
    return parse_instant(value if isinstance(value, str) else str(value), where)


def _log_level(value: str | None) -> str:
    level = (value or "info").strip().lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"log_level: expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def _path(text: str, folder: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else folder / path


def _unknown_key(where: str, key: str, known: Sequence[str]) -> str:
    message = f"{where}: unknown key (expected one of: {', '.join(sorted(known))})"
    close = difflib.get_close_matches(key, known, n=1)
    return f"{message}; did you mean {close[0]!r}?" if close else message


# Bounded in depth, items and characters: a config can hold a huge or deeply shared value,
# whose whole repr() would be built before being cut short.
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel = 3
_SHORT_REPR.maxdict = 4
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxset = 6
_SHORT_REPR.maxstring = _SHORT_REPR.maxlong = _SHORT_REPR.maxother = 80


def shown(value: object) -> str:
    """A value for a message, cut short: configs can hold long lists."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."
