"""The per-app blocks of the config (``apps[]``) and the rules every block shares: strict frozen
models, safe ids, label and variable names, URLs and addresses, the bounds of numbers.

:mod:`exporter.config` builds the whole file from these (and re-exports them); nothing here reads
a file, and nothing here imports another module of the exporter.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Final
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from exporter.model import SAFE_ID
from exporter.web.listen import port_number

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

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env_name(value: str | None) -> str | None:
    """The name of an environment variable (``token_env``, ``password_env``), or None."""
    if value is not None and not _ENV_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


def check_label_name(name: str) -> str:
    """A static label name: Prometheus' syntax, not reserved by Prometheus (``__``) nor by the
    exporter (:data:`RESERVED_LABELS`)."""
    if not _LABEL_NAME.fullmatch(name):
        raise ValueError(f"invalid label name {name!r}: use [a-zA-Z_][a-zA-Z0-9_]*")
    if name.startswith("__"):
        raise ValueError(
            f"invalid label name {name!r}: the '__' prefix is reserved for Prometheus' own labels"
        )
    if name in RESERVED_LABELS:
        raise ValueError(f"label name {name!r} clashes with a label of the exporter")
    return name


#: A map of static labels; every bad name in it is reported (at ``<path>.labels``), not just the
#: first.
Labels = dict[Annotated[str, AfterValidator(check_label_name)], str]


def check_id(value: str, max_len: int) -> str:
    if not value:
        raise ValueError("must not be empty")
    if len(value) > max_len:
        raise ValueError(f"id {value!r} is {len(value)} characters long, at most {max_len} allowed")
    if not SAFE_ID.fullmatch(value):
        raise ValueError(f"invalid id {value!r}: use only letters, digits, '-' and '_'")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def https_url(value: str, insecure_ok: bool, key: str) -> str:
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


def redis_url_problems(url: str) -> list[str]:
    """What is wrong with a ``coordination.redis_url`` (empty: nothing). No message shows the
    URL or any part of it that may hold a secret.

    >>> redis_url_problems("redis://redis:99999/0")
    ["the port must be a number from 1 to 65535, not '99999'"]
    """
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query, keep_blank_values=True)
    except ValueError:
        return ["not a valid URL"]
    problems = []
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        problems.append("must be redis://host:port/db or rediss://…")
    if parts.password is not None or any("password" in name.lower() for name in query):
        problems.append(
            "must not contain a password; give it in a password file or environment variable"
        )
    port = parts.netloc.rpartition("@")[2].rpartition("]")[2].partition(":")[2]
    if port and not port_number(port):  # port 0 too: nothing listens there
        problems.append(f"the port must be a number from 1 to 65535, not {port[:20]!r}")
    database = parts.path.removeprefix("/")
    if database and not database.isdigit():
        problems.append("the path must be a database number (redis://host:port/0)")
    return problems


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RateLimit(StrictModel):
    """The token's request budget: ``requests`` per ``period_seconds``, shared by every poll."""

    requests: int = Field(default=1200, gt=0, le=MAX_REQUESTS)
    period_seconds: float = Field(default=300.0, gt=0, le=WEEK, allow_inf_nan=False)
    #: Part of the budget left to the token's other users (dashboard, scripts): 0 <= x < 1.
    reserve_fraction: float = Field(default=0.0, ge=0, lt=1, allow_inf_nan=False)


class TokenFields(StrictModel):
    """``token_env`` or ``token_file``: where a token comes from (never the token itself)."""

    token_env: str | None = None
    token_file: str | None = None

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, value: str | None) -> str | None:
        return check_env_name(value)

    @field_validator("token_file")
    @classmethod
    def _one_token_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("token_env") is not None:
            raise ValueError("set token_env or token_file, not both")
        return value


def _meeting_from_str(value: Any) -> Any:
    return {"id": value} if isinstance(value, str) else value


class Meeting(StrictModel):
    id: str
    labels: Labels = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_id(value, 128)


class Discover(StrictModel):
    """Find an app's live meetings by listing its sessions (one request per page)."""

    enabled: bool = False
    per_page: int = Field(default=100, gt=0, le=1000)
    max_meetings: int = Field(default=5000, gt=0, le=MAX_MEETINGS)
    include: list[str] = Field(default_factory=list)  # only these meeting ids (when not empty)
    exclude: list[str] = Field(default_factory=list)
    name_regex: str | None = None  # re.search on the meeting's display name
    labels: Labels = Field(default_factory=dict)  # static labels of discovered meetings

    @field_validator("include", "exclude")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        return [check_id(v, 128) for v in value]

    @field_validator("name_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"invalid regular expression {value!r}: {err}") from None
        return value


class AppWebhooks(StrictModel):
    """Take this app's signed webhooks (``POST /webhooks/{account_id}/{app_id}``)."""

    enabled: bool = False


class _Pull(StrictModel):
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


class Quality(StrictModel):
    """Call quality from the peer reports of sampled peers that left (needs webhooks)."""

    enabled: bool = False
    sample_fraction: float = Field(default=1.0, ge=0, le=1, allow_inf_nan=False)
    max_reports_per_hour: int = Field(default=600, gt=0, le=MAX_REQUESTS)
    delay_seconds: float = Field(default=60.0, ge=0, le=WEEK, allow_inf_nan=False)


class MetricsOptions(StrictModel):
    """Cardinality the operator controls: per-meeting series, and the title label."""

    per_meeting: bool = True
    display_name: bool = True


class App(TokenFields):
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
        return check_id(value, 64)

    @field_validator("meetings")
    @classmethod
    def _unique(cls, value: list[Meeting]) -> list[Meeting]:
        seen: set[str] = set()
        for meeting in value:
            if meeting.id in seen:
                raise ValueError(f"meeting {meeting.id!r} is listed more than once")
            seen.add(meeting.id)
        return value
