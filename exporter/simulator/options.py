"""The simulator's settings: one frozen :class:`SimOptions` (conventions, pace, webhooks) and the
per-request :class:`FaultConfig`. Every value is checked when the options are made, so a bad one
is a ``ValueError`` naming the option before anything starts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = [
    "DAY_FORMATS",
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_APP_ID",
    "DEMO_TOKEN",
    "FAULT_KINDS",
    "LIVESTREAM_SHAPES",
    "NO_RECORDING_MESSAGES",
    "PAGING_FIELDS",
    "PAGING_MODES",
    "UNKNOWN_MEETING_MODES",
    "WEBHOOK_RETRY_DELAYS",
    "FaultConfig",
    "PageServed",
    "SimOptions",
]

DEFAULT_ACCOUNT_ID = "023e105f4ecef8ad9ca31a8372d0c353"
DEFAULT_APP_ID = "6f0a8a2c3b8e4f62a1d2c3b4e5f60718"
DEMO_TOKEN = "demo-token"
FAULT_KINDS = frozenset(
    {"500", "503", "timeout", "reset", "non_json", "wrong_types", "401", "429"}
    | {"trickle", "endless", "huge_header", "gzip_bomb", "deep_json", "huge_int", "long_name"}
    | {"unknown_status", "retry_after_huge", "not_found", "403", "lone_surrogate"}
)
MEETING_ONLY_FAULTS = frozenset({"not_found"})
PAGING_MODES = ("full", "partial", "absent")
PAGING_FIELDS = ("total_count", "start_offset", "end_offset")
UNKNOWN_MEETING_MODES = ("no_session", "not_found")
LIVESTREAM_SHAPES = ("list", "object")  # GET /livestreams: data a list, or {livestreams, paging}
NO_RECORDING_MESSAGES = ("no_active", "not_found")  # 404 message of active-recording with none
DAY_FORMATS = ("date", "datetime")  # analytics/daywise: day as 2027-01-15 or with a time part
WEBHOOK_RETRY_DELAYS = (0.2, 0.5, 1.0)  # seconds before the 1st, 2nd, 3rd (and later) retry
_PROBABILITIES = (
    "recording_chance",
    "recording_error_rate",
    "recording_stuck_rate",
    "livestream_chance",
    "livestream_error_rate",
    "peer_bad_rate",
    "peer_partial_rate",
    "peer_late_rate",
    "peer_missing_rate",
)


@dataclass
class FaultConfig:
    """Per-request fault probabilities (0..1) for the API endpoints."""

    error_500: float = 0.0
    error_503: float = 0.0  # answers 502 or 503 (picked at random) with an HTML body
    timeout: float = 0.0  # sleeps `slow_seconds`, then answers normally
    reset: float = 0.0  # closes the connection abruptly (RST), no answer
    non_json: float = 0.0  # 200 text/html "<html>oops</html>"
    wrong_types: float = 0.0  # 200 with live_participants a string and id a number
    latency_seconds: float = 0.0  # added to every API answer
    slow_seconds: float = 30.0
    trickle_seconds: float = 1.0  # pace of `trickle` (per byte) and `endless` (per chunk) answers

    def __post_init__(self) -> None:
        for name in ("error_500", "error_503", "timeout", "reset", "non_json", "wrong_types"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"FaultConfig.{name} must be within 0..1, got {value!r}")
        if self.latency_seconds < 0 or self.slow_seconds < 0:
            raise ValueError("FaultConfig latency_seconds and slow_seconds must be >= 0")
        if not self.trickle_seconds > 0:
            raise ValueError(
                f"FaultConfig.trickle_seconds must be > 0, got {self.trickle_seconds!r}"
            )


@dataclass(frozen=True, slots=True)
class PageServed:
    """What ``on_page`` hears about a ``/sessions`` page just built (and not yet sent)."""

    account_id: str
    app_id: str
    page_no: int  # as asked (the page base when not given)
    per_page: int  # items per page in force (after the cap)
    served: int  # sessions on this page
    total_count: int  # sessions matching when the page was built


@dataclass(frozen=True)
class SimOptions:
    """Everything a :class:`~exporter.simulator.Simulator` is made with; see the package
    docstring for what each convention means. ``Simulator(**kwargs)`` builds one of these."""

    token: str
    account_id: str = DEFAULT_ACCOUNT_ID
    app_id: str = DEFAULT_APP_ID
    meetings: int | tuple[str, ...] = 5
    auto: bool = True
    speed: float = 1.0
    seed: int | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    rate_limit: tuple[int, float] | None = None
    clock: Callable[[], float] = time.time
    live: bool = False
    # conventions the published spec leaves open
    page_base: int = 1
    per_page_cap: int = 100
    paging: str = "full"
    paging_drop: tuple[str, ...] = ("total_count",)
    unknown_meeting: str = "no_session"
    churn_per_page: int = 0
    on_page: Callable[[PageServed], None] | None = None
    livestream_shape: str = "list"
    no_recording: str = "no_active"
    usage_day_format: str = "date"
    # recordings and livestreams of auto-mode sessions (probabilities)
    recording_chance: float = 0.0  # a session that starts is recorded
    recording_error_rate: float = 0.0  # an auto recording ends ERRORED
    recording_stuck_rate: float = 0.0  # an auto recording's upload never finishes
    livestream_chance: float = 0.0  # a session that starts is livestreamed
    livestream_error_rate: float = 0.0  # an auto livestream goes ERRORED while LIVE
    # peer reports of the peers that leave (probabilities, and seconds)
    peer_bad_rate: float = 0.0  # a bad call: low MOS, high loss and RTT
    peer_partial_rate: float = 0.0  # some stream kinds missing
    peer_late_rate: float = 0.0  # the report is missing for peer_late_seconds after leaving
    peer_late_seconds: float = 100.0
    peer_missing_rate: float = 0.0  # the report never exists
    # webhooks
    webhook_url: str | None = None
    webhook_key: rsa.RSAPrivateKey | None = None
    webhook_retries: int = 3
    webhook_retry_delays: tuple[float, ...] = WEBHOOK_RETRY_DELAYS
    webhook_timeout: float = 2.0
    webhook_queue_size: int = 10_000
    register_webhooks: bool = True  # each app gets a registration of webhook_url, all events

    def __post_init__(self) -> None:
        # accept any iterable where a tuple is kept (lists from callers, generators from flags)
        for name in ("paging_drop", "webhook_retry_delays"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.meetings, int):
            object.__setattr__(self, "meetings", tuple(self.meetings))
        if self.faults is None:
            object.__setattr__(self, "faults", FaultConfig())
        if problem := self._general_problem() or self._convention_problem():
            raise ValueError(problem)
        if problem := self._webhook_problem():
            raise ValueError(problem)

    @classmethod
    def of(cls, options: SimOptions | None = None, **kwargs: Any) -> SimOptions:
        """``options`` with ``kwargs`` replaced, or new options from ``kwargs`` alone."""
        if options is None:
            return cls(**kwargs)
        values = {name: getattr(options, name) for name in cls.__dataclass_fields__}
        return cls(**(values | kwargs))

    def _general_problem(self) -> str:
        if not self.token:
            return "token must not be empty"
        if not self.speed > 0:
            return "speed must be > 0"
        limit = self.rate_limit
        if limit is not None and (limit[0] < 0 or not limit[1] > 0):
            return "rate_limit must be (requests >= 0, window_seconds > 0)"
        return ""

    def _convention_problem(self) -> str:
        if self.page_base not in (0, 1):
            return f"page_base must be 0 or 1, got {self.page_base!r}"
        if self.per_page_cap < 1:
            return f"per_page_cap must be >= 1, got {self.per_page_cap!r}"
        if self.paging not in PAGING_MODES:
            return f"paging must be one of {list(PAGING_MODES)}, got {self.paging!r}"
        if bad := [f for f in self.paging_drop if f not in PAGING_FIELDS]:
            return f"paging_drop: unknown paging fields {bad}; known: {list(PAGING_FIELDS)}"
        if self.paging == "partial" and not self.paging_drop:
            return "paging='partial' needs at least one field in paging_drop"
        choices = (
            ("unknown_meeting", UNKNOWN_MEETING_MODES),
            ("livestream_shape", LIVESTREAM_SHAPES),
            ("no_recording", NO_RECORDING_MESSAGES),
            ("usage_day_format", DAY_FORMATS),
        )
        for name, allowed in choices:
            if (value := getattr(self, name)) not in allowed:
                return f"{name} must be one of {list(allowed)}, got {value!r}"
        if self.churn_per_page < 0:
            return f"churn_per_page must be >= 0, got {self.churn_per_page!r}"
        for name in _PROBABILITIES:
            if not 0.0 <= (value := getattr(self, name)) <= 1.0:
                return f"{name} must be within 0..1, got {value!r}"
        if self.recording_error_rate + self.recording_stuck_rate > 1.0:
            return "recording_error_rate + recording_stuck_rate must be at most 1"
        if self.peer_late_rate + self.peer_missing_rate > 1.0:
            return "peer_late_rate + peer_missing_rate must be at most 1"
        if not 0 <= self.peer_late_seconds < float("inf"):
            return f"peer_late_seconds must be >= 0, got {self.peer_late_seconds!r}"
        return ""

    def _webhook_problem(self) -> str:
        key = self.webhook_key
        if key is not None and not isinstance(key, rsa.RSAPrivateKey):
            return f"webhook_key must be an RSA private key, got {type(key).__name__}"
        if self.webhook_url is None:
            return ""
        parts = urlsplit(self.webhook_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return f"webhook_url must be an http(s) URL, got {self.webhook_url!r}"
        if self.webhook_retries < 0:
            return f"webhook_retries must be >= 0, got {self.webhook_retries!r}"
        delays = self.webhook_retry_delays
        if not delays or any(not d >= 0 for d in delays):
            return f"webhook_retry_delays must be seconds >= 0, got {delays!r}"
        if not self.webhook_timeout > 0:
            return f"webhook_timeout must be > 0, got {self.webhook_timeout!r}"
        if self.webhook_queue_size < 1:
            return f"webhook_queue_size must be >= 1, got {self.webhook_queue_size!r}"
        return ""
