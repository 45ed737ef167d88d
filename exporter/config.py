"""Load and validate the config file into frozen, typed objects.

Everything about the file is checked before anything runs, and every problem is reported with its
key path::

    >>> load_config("bad.yaml")
    Traceback (most recent call last):
    ConfigError: apps[0].meetings[1].id: invalid id 'a/b': use only letters, digits, '-' and '_'

The API token is never part of the config object: :func:`read_token` fetches it from the environment
variable or file that the config names, and no message ever contains it.

Files are read by :mod:`exporter.files` (bounded, never blocking); every number must be finite
and within a bound no sane deployment reaches (see ``WEEK`` and the ``MAX_*`` constants; the
message names it).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from exporter.errors import ConfigError
from exporter.files import read_secret, read_yaml, yaml_type
from exporter.model import MeetingKey

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
DEFAULT_TOKEN_ENV = "CLOUDFLARE_API_TOKEN"
DEFAULT_WEBHOOK_KEY_URL = "https://api.realtime.cloudflare.com/.well-known/webhooks.json"

#: Labels the exporter sets itself; static meeting labels must not reuse them.
RESERVED_LABELS = frozenset(
    {
        "account_id",
        "app_id",
        "meeting_id",
        "reason",
        "status",
        "session_id",
        "type",
        "meeting_display_name",
        "version",
        "code",
        "token",
        "job",
        "instance",
    }
)

# Upper bounds of the numbers in the config: far beyond any sane deployment, low enough that
# every derived value (timedelta, sleep, budget arithmetic) stays finite and in range.
WEEK: Final = 7 * 86400  # intervals, timeouts, backoff, the budget period
MONTH: Final = 30 * 86400  # poll.stale_after_seconds
MAX_REQUESTS: Final = 10**7  # api.rate_limit.requests
MAX_CONCURRENCY: Final = 10_000  # poll.concurrency
MAX_MEETINGS: Final = 10**6  # discover.max_meetings
_LIMIT_NAMES: Final = {WEEK: "7 days", MONTH: "30 days"}

_ID_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _check_id(value: str, max_len: int) -> str:
    if not value:
        raise ValueError("must not be empty")
    if len(value) > max_len:
        raise ValueError(f"id {value!r} is {len(value)} characters long, at most {max_len} allowed")
    if not _ID_CHARS.fullmatch(value):
        raise ValueError(f"invalid id {value!r}: use only letters, digits, '-' and '_'")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RateLimit(_Model):
    """The token's request budget: ``requests`` per ``period_seconds``, shared by every poll."""

    requests: int = Field(default=1200, gt=0, le=MAX_REQUESTS)
    period_seconds: float = Field(default=300.0, gt=0, le=WEEK, allow_inf_nan=False)
    #: Part of the budget left to the token's other users (dashboard, scripts): 0 <= x < 1.
    reserve_fraction: float = Field(default=0.0, ge=0, lt=1, allow_inf_nan=False)


class _TokenFields(_Model):
    """``token_env`` or ``token_file``: where a token comes from (never the token itself)."""

    token_env: str | None = None
    token_file: str | None = None

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @field_validator("token_file")
    @classmethod
    def _one_token_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("token_env") is not None:
            raise ValueError("set token_env or token_file, not both")
        return value


@dataclass(frozen=True, slots=True)
class TokenRef:
    """Where one token comes from; ``key`` is the config path that named it, for messages."""

    env: str | None
    file: str | None
    key: str

    def __str__(self) -> str:
        return self.file if self.file is not None else "$" + (self.env or DEFAULT_TOKEN_ENV)

    @property
    def source(self) -> tuple[str | None, str | None]:
        """Identity of the token: apps naming the same variable or file share one budget."""
        return (None, self.file) if self.file is not None else (self.env or DEFAULT_TOKEN_ENV, None)


class ApiConfig(_TokenFields):
    allow_insecure_http: bool = False  # declared first: base_url's check reads it
    base_url: str = DEFAULT_BASE_URL
    timeout_seconds: float = Field(default=10.0, gt=0, le=WEEK, allow_inf_nan=False)
    rate_limit: RateLimit = RateLimit()

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str, info: ValidationInfo) -> str:
        insecure_ok = info.data.get("allow_insecure_http", False)
        return _https_url(value, insecure_ok, "api.allow_insecure_http").rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[v6addr]:PORT`` to ``(host, port)``;
    ``ValueError`` otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _https_url(value: str, insecure_ok: bool, key: str) -> str:
    """An http(s) URL without query or fragment; plain http only to loopback unless allowed."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r} must not have a query or fragment")
    if parts.scheme == "http" and not insecure_ok and not _is_loopback(parts.hostname):
        raise ValueError(
            f"{value!r} is plain http to a non-loopback host; use https or set {key}: true"
        )
    return value


class PollConfig(_Model):
    interval_seconds: float = Field(default=30.0, gt=0, le=WEEK, allow_inf_nan=False)
    stale_after_seconds: float | None = Field(default=None, gt=0, le=MONTH, allow_inf_nan=False)
    concurrency: int = Field(default=10, gt=0, le=MAX_CONCURRENCY)
    #: Longest wait between polls of a meeting that keeps failing.
    max_backoff_seconds: float = Field(default=300.0, gt=0, le=WEEK, allow_inf_nan=False)

    @property
    def stale_after(self) -> float:
        """Seconds the last good values survive failed polls (default 3 × interval)."""
        if self.stale_after_seconds is None:
            return 3 * self.interval_seconds
        return self.stale_after_seconds


def _meeting_from_str(value: Any) -> Any:
    return {"id": value} if isinstance(value, str) else value


class Meeting(_Model):
    id: str
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _check_id(value, 128)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)


def _check_labels(value: dict[str, str]) -> dict[str, str]:
    for name in value:
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"invalid label name {name!r}: use [a-zA-Z_][a-zA-Z0-9_]*")
        if name in RESERVED_LABELS:
            raise ValueError(f"label name {name!r} clashes with a label of the exporter")
    return value


class Discover(_Model):
    """Find an app's live meetings by listing its sessions (one request per page)."""

    enabled: bool = False
    per_page: int = Field(default=100, gt=0, le=1000)
    max_meetings: int = Field(default=5000, gt=0, le=MAX_MEETINGS)
    include: list[str] = Field(default_factory=list)  # only these meeting ids (when not empty)
    exclude: list[str] = Field(default_factory=list)
    name_regex: str | None = None  # re.search on the meeting's display name
    labels: dict[str, str] = Field(default_factory=dict)  # static labels of discovered meetings

    @field_validator("include", "exclude")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        return [_check_id(v, 128) for v in value]

    @field_validator("name_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"invalid regular expression {value!r}: {err}") from None
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)


class AppWebhooks(_Model):
    """Take this app's signed webhooks (``POST /webhooks/{account_id}/{app_id}``)."""

    enabled: bool = False


class _Pull(_Model):
    """An app-level pull: off by default, at most once per ``interval_seconds``."""

    enabled: bool = False
    interval_seconds: float = Field(default=60.0, gt=0, le=WEEK, allow_inf_nan=False)


class Recordings(_Pull):
    """Watch the app's recordings with one windowed listing per interval (``GET /recordings``)."""

    window_hours: float = Field(default=24.0, gt=0, le=24 * 31, allow_inf_nan=False)


class Livestreams(_Pull):
    """Watch the app's livestreams with one listing per interval (``GET /livestreams``)."""


class Usage(_Pull):
    """Minutes per day from ``GET /analytics/daywise``, pulled at most every interval."""

    interval_seconds: float = Field(default=900.0, gt=0, le=WEEK, allow_inf_nan=False)


class Quality(_Model):
    """Call quality from the peer reports of sampled peers that left (needs webhooks)."""

    enabled: bool = False
    sample_fraction: float = Field(default=1.0, ge=0, le=1, allow_inf_nan=False)
    max_reports_per_hour: int = Field(default=600, gt=0, le=MAX_REQUESTS)
    delay_seconds: float = Field(default=60.0, ge=0, le=WEEK, allow_inf_nan=False)


_PULL_KEYS: Final = ("recordings", "livestreams", "usage", "quality")
_NOT_YET: Final = "not implemented in this version yet; ignored"


class MetricsOptions(_Model):
    """Cardinality the operator controls: per-meeting series, and the title label."""

    per_meeting: bool = True
    display_name: bool = True


class App(_TokenFields):
    account_id: str
    app_id: str
    meetings: list[Annotated[Meeting, BeforeValidator(_meeting_from_str)]] = Field(
        default_factory=list
    )
    discover: Discover = Discover()
    webhooks: AppWebhooks = AppWebhooks()
    recordings: Recordings = Recordings()
    livestreams: Livestreams = Livestreams()
    usage: Usage = Usage()
    quality: Quality = Quality()
    metrics: MetricsOptions = MetricsOptions()

    @model_validator(mode="after")
    def _something_to_watch(self) -> App:
        if not self.meetings and not self.discover.enabled:
            raise ValueError("meetings must list at least one entry (or enable discover)")
        if self.quality.enabled and not self.webhooks.enabled:
            raise ValueError(
                "quality.enabled needs webhooks.enabled: peer ids arrive with webhook events"
            )
        return self

    @property
    def key(self) -> tuple[str, str]:
        return (self.account_id, self.app_id)

    @field_validator("account_id", "app_id")
    @classmethod
    def _ids(cls, value: str) -> str:
        return _check_id(value, 64)

    @field_validator("meetings")
    @classmethod
    def _unique(cls, value: list[Meeting]) -> list[Meeting]:
        seen: set[str] = set()
        for meeting in value:
            if meeting.id in seen:
                raise ValueError(f"meeting {meeting.id!r} is listed more than once")
            seen.add(meeting.id)
        return value


class WebhooksConfig(_Model):
    """The webhook receiver: its own listener (off unless ``listen_address`` is set), so it can
    face the internet while ``/metrics`` stays internal."""

    allow_insecure_http: bool = False  # declared first: public_key_url's check reads it
    listen_address: str | None = None
    public_key_file: str | None = None
    public_key_url: str = DEFAULT_WEBHOOK_KEY_URL
    max_body_bytes: int = Field(default=1 << 20, gt=0, le=64 << 20)
    #: Polling interval of an app while its webhooks are healthy.
    reconcile_interval_seconds: float = Field(default=300.0, gt=0, le=WEEK, allow_inf_nan=False)
    #: Base URL at which RealtimeKit reaches this receiver; enables the registration check.
    public_url: str | None = None
    registration_check_seconds: float = Field(default=600.0, gt=0, le=WEEK, allow_inf_nan=False)

    @field_validator("listen_address")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @field_validator("public_key_url", "public_url")
    @classmethod
    def _urls(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        insecure_ok = info.data.get("allow_insecure_http", False)
        url = _https_url(value, insecure_ok, "webhooks.allow_insecure_http")
        return url.rstrip("/") if info.field_name == "public_url" else url


class CoordinationConfig(_Model):
    """Replicas coordinated through Redis: one budget per token, one leader per shard. The
    password comes from ``password_file`` or ``password_env``, never from this file."""

    redis_url: str
    key_prefix: str = "realtimekit-exporter"
    lease_seconds: float = Field(default=15.0, ge=1, le=3600, allow_inf_nan=False)
    password_env: str | None = None
    password_file: str | None = None
    ca_file: str | None = None  # CA bundle for rediss://, when not the system's

    @field_validator("password_file")
    @classmethod
    def _one_password_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("password_env") is not None:
            raise ValueError("set password_env or password_file, not both")
        return value


class Config(_Model):
    api: ApiConfig = ApiConfig()
    poll: PollConfig = PollConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    coordination: CoordinationConfig | None = None
    apps: list[App] = Field(min_length=1)

    @model_validator(mode="after")
    def _webhooks_need_a_listener(self) -> Config:
        wanting = [i for i, app in enumerate(self.apps) if app.webhooks.enabled]
        if wanting and self.webhooks.listen_address is None:
            raise ValueError(
                f"webhooks.listen_address is required: apps[{wanting[0]}].webhooks.enabled is true"
            )
        return self

    @field_validator("apps")
    @classmethod
    def _unique_apps(cls, value: list[App]) -> list[App]:
        seen: set[tuple[str, str]] = set()
        for app in value:
            key = (app.account_id, app.app_id)
            if key in seen:
                raise ValueError(f"app {app.account_id}/{app.app_id} is listed more than once")
            seen.add(key)
        return value

    def token_ref(self, app: App) -> TokenRef:
        """The token an app uses: its own ``token_env``/``token_file``, else ``api``'s."""
        if app.token_env is not None or app.token_file is not None:
            index = self.apps.index(app)
            return TokenRef(app.token_env, app.token_file, f"apps[{index}]")
        return TokenRef(self.api.token_env, self.api.token_file, "api")

    def targets(self) -> dict[MeetingKey, tuple[tuple[str, str], ...]]:
        """Every configured meeting with its static labels, in config order."""
        return {
            MeetingKey(app.account_id, app.app_id, m.id): tuple(sorted(m.labels.items()))
            for app in self.apps
            for m in app.meetings
        }

    def warnings(self) -> list[str]:
        """Values that are allowed but look unwise, one line each."""
        out: list[str] = []
        poll, api = self.poll, self.api
        if poll.stale_after < poll.interval_seconds:
            out.append(
                f"poll.stale_after_seconds ({poll.stale_after:g}) is shorter than "
                f"poll.interval_seconds ({poll.interval_seconds:g}): "
                "values will vanish between polls"
            )
        if api.timeout_seconds > poll.interval_seconds:
            out.append(
                f"api.timeout_seconds ({api.timeout_seconds:g}) is longer than "
                f"poll.interval_seconds ({poll.interval_seconds:g})"
            )
        out.extend(self._not_yet_acted_on())
        # Demand above the request budget is reported by the poller, which stretches the interval.
        return out

    def _not_yet_acted_on(self) -> list[str]:
        """Keys of the next round that this version accepts but does not act on yet: said at
        once, so an enabled pull or a cardinality switch never silently does nothing."""
        out: list[str] = []
        for i, app in enumerate(self.apps):
            wanted = [k for k in _PULL_KEYS if getattr(app, k).enabled]
            out += [f"apps[{i}].{key}: {_NOT_YET}" for key in wanted]
        if self.webhooks.public_url is not None:
            out.append(f"webhooks.public_url (the registration check): {_NOT_YET}")
        return out


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _messages(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors(include_url=False):
        kind, msg = e["type"], e["msg"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "too_short" and e["loc"] and e["loc"][-1] in ("apps", "meetings"):
            msg = "must list at least one entry"
        elif kind == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif kind == "less_than_equal":
            limit = e.get("ctx", {})["le"]
            name = _LIMIT_NAMES.get(limit)
            shown = int(limit) if float(limit).is_integer() else limit
            msg = f"must be at most {shown}" + (f" ({name})" if name else "")
        else:
            msg = msg.replace("Input should be", "must be")
            if kind.endswith("_type"):
                msg += f" (got {yaml_type(e.get('input'))})"
        lines.append(f"{_path(e['loc'])}: {msg}")
    return lines


def parse_config(data: Any) -> Config:
    """Validate already-parsed YAML data. Raises :class:`ConfigError` listing every problem."""
    if data is None:
        raise ConfigError(["(top level): the config is empty"])
    if not isinstance(data, Mapping):
        raise ConfigError(["(top level): the config must be a mapping of keys"])
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_messages(err)) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config file. Safe in a worker thread; never blocks on a FIFO."""
    return parse_config(read_yaml(path))


def read_token(ref: TokenRef, environ: Mapping[str, str] | None = None) -> str:
    """Fetch a token from where ``ref`` says. The message of a failure never holds it."""
    if ref.file is not None:
        return read_secret(f"{ref.key}.token_file", path=ref.file, what="token")
    name = ref.env or DEFAULT_TOKEN_ENV
    return read_secret(f"{ref.key}.token_env", env=name, environ=environ, what="token")


def read_coordination_password(
    config: Config, environ: Mapping[str, str] | None = None
) -> str | None:
    """The Redis password the ``coordination`` block names (None: none named)."""
    coordination = config.coordination
    if coordination is None:
        return None
    if coordination.password_file is not None:
        return read_secret(
            "coordination.password_file", path=coordination.password_file, what="password"
        )
    if coordination.password_env is not None:
        return read_secret(
            "coordination.password_env",
            env=coordination.password_env,
            environ=environ,
            what="password",
        )
    return None


def read_tokens(
    config: Config, environ: Mapping[str, str] | None = None
) -> dict[tuple[str | None, str | None], str]:
    """Every token the config names, by :attr:`TokenRef.source`; all problems at once."""
    tokens: dict[tuple[str | None, str | None], str] = {}
    problems: list[str] = []
    tried = set()
    for app in config.apps:
        ref = config.token_ref(app)
        if ref.source in tried:
            continue
        tried.add(ref.source)
        try:
            tokens[ref.source] = read_token(ref, environ)
        except ConfigError as err:
            problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    return tokens
