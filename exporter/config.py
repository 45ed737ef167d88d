"""Load and validate the config file into frozen, typed objects: the one boundary of everything
start-up reads.

Everything about the file is checked before anything runs, and every problem is reported with its
key path::

    >>> load_config("bad.yaml")
    Traceback (most recent call last):
    ConfigError: apps[0].meetings[1].id: invalid id 'a/b': use only letters, digits, '-' and '_'

``--config.check``, a real start and a reload all go through :func:`load_config` and the
``read_*`` functions here, so they agree on every config: the ``coordination`` block's rules, the
webhook key file (read and parsed at load), the tokens and the Redis password. The API token is
never part of the config object: :func:`read_token` fetches it from the environment variable or
file that the config names, and no message ever contains it.

Files are read by :mod:`exporter.files` (bounded, never blocking); every number must be finite
and within a bound no sane deployment reaches (see ``WEEK`` and the ``MAX_*`` constants; the
message names it). The per-app blocks live in :mod:`exporter.appconfig`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from exporter.appconfig import (
    MAX_CONCURRENCY,
    MAX_MEETINGS,
    MAX_REQUESTS,
    MONTH,
    RESERVED_LABELS,
    WEEK,
    App,
    AppWebhooks,
    Discover,
    Livestreams,
    Meeting,
    MetricsOptions,
    Quality,
    RateLimit,
    Recordings,
    StrictModel,
    TokenFields,
    Usage,
    check_env_name,
    https_url,
    redis_url_problems,
)
from exporter.errors import ConfigError
from exporter.files import read_ca_bundle, read_public_key, read_secret, read_yaml, yaml_type
from exporter.model import MeetingKey, TokenSource
from exporter.web.listen import split_host_port

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TOKEN_ENV",
    "DEFAULT_WEBHOOK_KEY_URL",
    "HA_EXTRA",
    "MAX_CONCURRENCY",
    "MAX_MEETINGS",
    "MAX_REQUESTS",
    "MONTH",
    "RESERVED_LABELS",
    "WEEK",
    "ApiConfig",
    "App",
    "AppWebhooks",
    "Config",
    "ConfigError",
    "CoordinationConfig",
    "Discover",
    "Livestreams",
    "Meeting",
    "MetricsOptions",
    "PollConfig",
    "Quality",
    "RateLimit",
    "Recordings",
    "TokenRef",
    "Usage",
    "WebhooksConfig",
    "load_config",
    "parse_config",
    "read_coordination_password",
    "read_token",
    "read_tokens",
    "restart_needed",
    "split_host_port",
]

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
DEFAULT_TOKEN_ENV = "CLOUDFLARE_API_TOKEN"
DEFAULT_WEBHOOK_KEY_URL = "https://api.realtime.cloudflare.com/.well-known/webhooks.json"
#: What a ``coordination`` block needs installed, and the line saying so when it is not.
HA_PACKAGES: Final = ("redis", "limits")
HA_EXTRA: Final = "coordination needs the ha extra: pip install 'realtimekit-exporter[ha]'"

_LIMIT_NAMES: Final = {WEEK: "7 days", MONTH: "30 days"}


@dataclass(frozen=True, slots=True)
class TokenRef:
    """Where one token comes from; ``key`` is the config path that named it, for messages."""

    env: str | None
    file: str | None
    key: str

    def __str__(self) -> str:
        return self.file if self.file is not None else "$" + (self.env or DEFAULT_TOKEN_ENV)

    @property
    def source(self) -> TokenSource:
        """Identity of the token: apps naming the same variable or file share one budget."""
        return (None, self.file) if self.file is not None else (self.env or DEFAULT_TOKEN_ENV, None)


class ApiConfig(TokenFields):
    allow_insecure_http: bool = False  # declared first: base_url's check reads it
    base_url: str = DEFAULT_BASE_URL
    timeout_seconds: float = Field(default=10.0, gt=0, le=WEEK, allow_inf_nan=False)
    rate_limit: RateLimit = RateLimit()

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str, info: ValidationInfo) -> str:
        insecure_ok = info.data.get("allow_insecure_http", False)
        return https_url(value, insecure_ok, "api.allow_insecure_http").rstrip("/")


class PollConfig(StrictModel):
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


class WebhooksConfig(StrictModel):
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
        url = https_url(value, insecure_ok, "webhooks.allow_insecure_http")
        return url.rstrip("/") if info.field_name == "public_url" else url

    @field_validator("public_key_file")
    @classmethod
    def _key_file(cls, value: str | None) -> str | None:
        """Read and parsed here, at load, so that --config.check finds what start would."""
        if value is not None:
            key = "webhooks.public_key_file"
            try:
                read_public_key(value, key)
            except ConfigError as err:
                raise ValueError(err.problems[0].removeprefix(f"{key}: ")) from None
        return value


class CoordinationConfig(StrictModel):
    """Replicas coordinated through Redis: one budget per token, one leader per shard. The
    password comes from ``password_file`` or ``password_env``, never from this file (nor from
    the URL: ``redis_url`` is shown on ``/config``)."""

    redis_url: str
    key_prefix: str = "realtimekit-exporter"
    lease_seconds: float = Field(default=15.0, ge=1, le=3600, allow_inf_nan=False)
    password_env: str | None = None
    password_file: str | None = None
    ca_file: str | None = None  # CA bundle for rediss://, when not the system's

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        problems = redis_url_problems(value)
        if problems:
            raise ValueError("\n".join(problems))  # one line each: see _messages
        return value

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError("must be non-empty, without spaces")
        return value

    @field_validator("password_env")
    @classmethod
    def _password_env(cls, value: str | None) -> str | None:
        return check_env_name(value)

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        url = info.data.get("redis_url")  # absent when it is invalid: said there
        if url is not None and not url.lower().startswith("rediss://"):
            raise ValueError("is only used with a rediss:// (TLS) redis_url")
        try:
            read_ca_bundle(value, "coordination.ca_file")
        except ConfigError as err:
            raise ValueError(err.problems[0].removeprefix("coordination.ca_file: ")) from None
        return value

    @field_validator("password_file")
    @classmethod
    def _one_password_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("password_env") is not None:
            raise ValueError("set password_env or password_file, not both")
        return value


class Config(StrictModel):
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
        out.extend(self._reconcile_outlives_stale())
        # Demand above the request budget is reported by the poller, which stretches the interval.
        return out

    def _reconcile_outlives_stale(self) -> list[str]:
        """An explicit ``stale_after_seconds`` below the reconcile interval: apps with healthy
        webhooks are polled less often than that, so their values outlive it."""
        stale, reconcile = self.poll.stale_after_seconds, self.webhooks.reconcile_interval_seconds
        hooked = [f"apps[{i}]" for i, app in enumerate(self.apps) if app.webhooks.enabled]
        if stale is None or stale >= reconcile or not hooked:
            return []
        return [
            f"poll.stale_after_seconds ({stale:g}) is shorter than "
            f"webhooks.reconcile_interval_seconds ({reconcile:g}) of {', '.join(hooked)} "
            "(webhooks enabled): while their webhooks are healthy those apps are polled every "
            f"{reconcile:g}s, and their values are kept that long (stale_after_seconds is a floor)"
        ]


def _path(loc: tuple[int | str, ...]) -> str:
    if loc[-2:-1] and loc[-1] == "[key]":  # a bad key of a map: named by its message
        loc = loc[:-2]
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
        if e["loc"][-1:] == ("[key]",) and kind != "value_error":  # a key that is no string
            msg = f"name {e['loc'][-2]!r} {msg}"
        path = _path(e["loc"])
        lines += [f"{path}: {line}" for line in msg.split("\n")]  # a validator's several problems
    return lines


def parse_config(data: Any) -> Config:
    """Validate already-parsed YAML data. Raises :class:`ConfigError` listing every problem."""
    if data is None:
        raise ConfigError(["(top level): the config is empty"])
    if not isinstance(data, Mapping):
        raise ConfigError(["(top level): the config must be a mapping of keys"])
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_messages(err)) from None
    if config.coordination is not None and not ha_installed():
        raise ConfigError([HA_EXTRA])
    return config


def ha_installed() -> bool:
    """Whether the packages of the ``ha`` extra (Redis coordination) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in HA_PACKAGES)


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


#: The blocks a reload cannot change: they are read once, at start.
RESTART_BLOCKS: Final = ("coordination", "webhooks")


def restart_needed(running: Config, loaded: Config) -> str | None:
    """The line a reload logs when ``loaded`` changes a block that only a restart applies
    (None: nothing such changed)::

        config reload: coordination.redis_url, webhooks.listen_address changed; a reload keeps
        the running values, restart to apply them
    """
    changed: list[str] = []
    for block in RESTART_BLOCKS:
        old, new = getattr(running, block), getattr(loaded, block)
        if old == new:
            continue
        if old is None or new is None:
            changed.append(block)
            continue
        changed += [
            f"{block}.{name}"
            for name in type(new).model_fields
            if getattr(old, name) != getattr(new, name)
        ]
    if not changed:
        return None
    return (
        f"config reload: {', '.join(changed)} changed; a reload keeps the running values, "
        "restart to apply them"
    )
