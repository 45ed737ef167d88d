"""The human pages of the exporter: ``/`` (a status page) and ``/config`` (the running config).

Both are pure functions of what the caller hands over (store states, a health snapshot, the config,
the time): no I/O, no HTTP. Like blackbox_exporter's history page, the status page shows per app how
it is polled and what its budget does, and per meeting what the last polls saw and its recording
and livestream state (:mod:`exporter.status_media`), failing meetings first, bounded to ``limit``
rows::

    >>> page = status_page(states=store.snapshot()[1], health=health.snapshot(), config=config,
    ...     now=time.time(), stale_after=config.poll.stale_after, version=__version__,
    ...     telemetry_path="/metrics")

Every value on the page goes through :func:`html.escape`; the page has no JavaScript and loads
nothing (its small CSS is inline, and a Content-Security-Policy meta tag forbids scripts anyway).
No secret is on it: the config holds no token, and a token's source is shown by name only
(``$CLOUDFLARE_API_TOKEN`` or the file's path), never read; of recordings and livestreams only
statuses and times.
"""

from __future__ import annotations

import heapq
import html
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import yaml

from exporter.config import DEFAULT_TOKEN_ENV, App, Config
from exporter.errors import REASONS
from exporter.exposition import encodable
from exporter.health import AppHealth, HealthSnapshot
from exporter.model import NO_ACTIVE_SESSION, Answer, MeetingKey, Session
from exporter.status_media import OFF, MediaView, ago
from exporter.store import MeetingState

log = logging.getLogger(__name__)

#: Meeting states, in the order the page lists them.
KINDS: Final = ("failing", "live", "idle", "unknown")
REDACTED: Final = "<secret>"
#: Parts of a config key that mark its value as a secret (see :func:`redact`).
SECRET_WORDS: Final = ("password", "secret", "credential", "private_key")

_CSS: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f0f0f0}small{color:#666}
.failing{background:#fde2e2}.live{background:#e3f6e3}.unknown{color:#777}
.paused{color:#b00;font-weight:bold}
"""


def _e(value: object) -> str:
    """``value`` as HTML text (quotes too, so it is also safe inside an attribute), every lone
    surrogate replaced (:func:`~exporter.exposition.encodable`: the page must encode as UTF-8)."""
    return html.escape(encodable(str(value)), quote=True)


def _num(value: float) -> str:
    """``3`` for 3.0, ``2.50`` for 2.5."""
    return f"{value:g}" if not math.isfinite(value) or value == int(value) else f"{value:.2f}"


def _age(now: float, then: float | None) -> str:
    return "never" if then is None else ago(now, then)


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _counts(counts: Mapping[str, int]) -> str:
    """``{"timeout": 2, "auth": 0}`` as ``timeout ×2`` (zeros left out), or an empty string."""
    return ", ".join(f"{k} ×{v}" for k, v in counts.items() if v)


def _table(headers: Sequence[str], rows: Iterable[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{''.join(rows)}</tbody></table>\n"


def _row(cells: Iterable[str], cls: str = "") -> str:
    """One table row of already escaped cells."""
    attr = f' class="{_e(cls)}"' if cls else ""
    return f"<tr{attr}>{''.join(f'<td>{c}</td>' for c in cells)}</tr>\n"


# -- meetings -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Meeting:
    key: MeetingKey
    state: MeetingState
    kind: str  # one of KINDS
    answer: Answer | None  # the fresh answer, if any

    @property
    def errors(self) -> dict[str, int]:
        return dict(zip(REASONS, self.state.errors, strict=True))

    def rank(self) -> tuple[int, float, MeetingKey]:
        """Sort key: kind first; among failing the most errors, among live the most people."""
        if self.kind == "failing":
            weight = -float(sum(self.state.errors))
        elif isinstance(self.answer, Session):
            weight = -self.answer.live_participants
        else:
            weight = 0.0
        return (KINDS.index(self.kind), weight, self.key)


def classify(state: MeetingState, now: float, stale_after: float) -> tuple[str, Answer | None]:
    """The meeting's kind (one of :data:`KINDS`) and its fresh answer.

    ``failing``: the last poll failed. ``live``: a fresh LIVE session. ``idle``: freshly known to
    have nobody in it (no session, or one that ended). ``unknown``: not polled yet, or the last
    good answer is older than ``stale_after``.
    """
    answer = state.fresh_answer(now, stale_after)
    if state.up is False:
        return "failing", answer
    if answer is None:
        return "unknown", None
    if isinstance(answer, Session) and answer.status == "LIVE":
        return "live", answer
    return "idle", answer


@dataclass(frozen=True, slots=True)
class _Found:
    """The meetings to show (at most ``limit``, in page order) and counts over all of them."""

    shown: list[_Meeting]
    tally: dict[str, int]  # meetings per kind
    per_app: dict[tuple[str, str], int]  # meetings per app


def _meetings(
    states: Mapping[MeetingKey, MeetingState], now: float, stale_after: float, limit: int
) -> _Found:
    """One pass over every meeting (counts), and the first ``limit`` in page order without
    sorting them all: O(n log limit), so a page of 100,000 meetings stays cheap."""
    tally = dict.fromkeys(KINDS, 0)
    per_app: dict[tuple[str, str], int] = {}

    def each() -> Iterator[_Meeting]:
        for key, state in states.items():
            meeting = _Meeting(key, state, *classify(state, now, stale_after))
            tally[meeting.kind] += 1
            per_app[key.app] = per_app.get(key.app, 0) + 1
            yield meeting

    meetings = each()
    shown = heapq.nsmallest(limit, meetings, key=_Meeting.rank) if limit > 0 else []
    for _ in meetings:  # counted even when none is shown
        pass
    return _Found(shown, tally, per_app)


def _tally(meetings: Iterable[_Meeting]) -> dict[str, int]:
    out = dict.fromkeys(KINDS, 0)
    for m in meetings:
        out[m.kind] += 1
    return out


def _tally_text(tally: Mapping[str, int]) -> str:
    """``2 failing, 3 live, 1 idle`` (``, N unknown`` only when there are any)."""
    shown = [k for k in KINDS if k != "unknown" or tally[k]]
    return ", ".join(f"{tally[k]} {k}" for k in shown)


def _session_cell(answer: Answer | None, now: float) -> str:
    if answer is NO_ACTIVE_SESSION:
        return "no active session"
    if not isinstance(answer, Session):
        return ""
    name = _e(answer.meeting_display_name) if answer.meeting_display_name else "<i>unnamed</i>"
    started = f", started {_age(now, answer.started_at)}" if answer.started_at else ""
    return f"{name}<br><small>{_e(answer.status)} session {_e(answer.id)}{_e(started)}</small>"


def _kind_text(m: _Meeting) -> str:
    if m.kind == "idle" and isinstance(m.answer, Session):
        return "idle (session ended)"
    if m.kind == "unknown" and m.state.up is None:
        return "unknown (not polled yet)"
    if m.kind == "unknown":
        return "unknown (answer stale)"
    return m.kind


def _media_cells(media: MediaView | None, key: MeetingKey) -> list[str]:
    """The Recording and Livestream cells (:mod:`exporter.status_media`); off without a view."""
    cells = (OFF, OFF) if media is None else (media.recording(key), media.livestream(key))
    return [_e(c.text) + (f"<br><small>{_e(c.detail)}</small>" if c.detail else "") for c in cells]


def _meeting_row(m: _Meeting, now: float, media: MediaView | None) -> str:
    key, state, answer = m.key, m.state, m.answer
    labels = " ".join(f'{k}="{v}"' for k, v in state.labels)
    people = _num(answer.live_participants) if isinstance(answer, Session) else ""
    if m.kind == "idle":
        people = "0"
    took = "" if state.poll_duration is None else f"{state.poll_duration:.3f} s"
    error = "last poll failed" if state.up is False else ""
    counts = _counts(m.errors)
    cells = [
        _e(_kind_text(m)),
        f"{_e(key.meeting_id)}<br><small>app {_e(key.app_id)}</small>",
        _e(labels),
        _e(people),
        _e(_age(now, state.last_success)),
        _e(took),
        "<br>".join(_e(part) for part in (error, counts) if part),
        _session_cell(answer, now),
        *_media_cells(media, key),
    ]
    return _row(cells, m.kind)


def _safe_row(m: _Meeting, now: float, media: MediaView | None) -> str:
    """:func:`_meeting_row`, or a row saying it could not be shown: one meeting's bug must not
    take the page down."""
    try:
        return _meeting_row(m, now, media)
    except Exception:  # a bug in one meeting's values; the page shows the others
        log.exception("status page: meeting %s could not be shown", m.key.meeting_id)
        cells = ["could not be shown", _e(m.key.meeting_id), *[""] * len(_MEETING_HEADERS[2:])]
        return _row(cells, "failing")


_MEETING_HEADERS: Final = (
    "State",
    "Meeting",
    "Labels",
    "Participants",
    "Last success",
    "Last poll took",
    "Errors (since start)",
    "Session",
    "Recording",
    "Livestream",
)


def _meetings_section(found: _Found, now: float, media: MediaView | None) -> str:
    shown, total = found.shown, sum(found.tally.values())
    out = [f"<h2>Meetings</h2>\n<p>{total} exported: {_e(_tally_text(found.tally))}.</p>\n"]
    if shown:
        out.append(_table(_MEETING_HEADERS, (_safe_row(m, now, media) for m in shown)))
    if total > len(shown):
        on_page = _tally(shown)
        rest = {kind: n - on_page[kind] for kind, n in found.tally.items()}
        more = f"… and {total - len(shown)} more ({_tally_text(rest)})"
        out.append(f'<p id="more">{_e(more)}</p>\n')
    return "".join(out)


# -- apps and budget ------------------------------------------------------------------------------


def _discovery_text(health: AppHealth | None) -> str:
    if health is None:
        return "no cycle yet"
    up = {None: "not run yet", True: "up", False: "DOWN"}[health.up]
    parts = [
        up,
        f"{health.live_sessions} live sessions",
        f"{_num(health.live_participants)} participants",
        f"{health.pages} pages read",
        f"last cycle {health.duration:.2f} s",
    ]
    extras = {
        "confirmations": health.confirmations,
        "dropped (max_meetings)": health.dropped,
        "incomplete listings": health.incomplete,
        "invalid sessions": health.invalid_sessions,
    }
    parts += [f"{name} {n}" for name, n in extras.items() if n]
    errors = _counts(health.errors)
    if errors:
        parts.append(f"errors: {errors}")
    return ", ".join(parts)


def _demand(app: App, meetings: int, interval: float, health: AppHealth | None) -> float:
    """Requests per second this app plans to send: one per meeting per interval, or (discovery)
    the listing's pages per interval."""
    if not interval > 0:
        return 0.0
    if not app.discover.enabled:
        return meetings / interval
    live = health.live_sessions if health is not None else 0
    return max(1, math.ceil(live / app.discover.per_page)) / interval


def _apps_section(
    config: Config, health: HealthSnapshot, per_app: Mapping[tuple[str, str], int]
) -> tuple[str, float]:
    rows, total = [], 0.0
    for app in config.apps:
        configured = config.poll.interval_seconds
        interval = health.effective_intervals.get(app.key, configured)
        stretched = f" (configured {_num(configured)} s)" if interval != configured else ""
        app_health = health.apps.get(app.key)
        demand = _demand(app, per_app.get(app.key, 0), interval, app_health)
        total += demand
        discovery = app.discover.enabled
        cells = [
            f"{_e(app.account_id)}/<br>{_e(app.app_id)}",
            "discovery" if discovery else "per meeting",
            _e(f"every {_num(interval)} s{stretched}"),
            _e(per_app.get(app.key, 0)),
            _e(f"{demand:.2f} req/s"),
            _e(str(config.token_ref(app))),
            _e(_discovery_text(app_health)) if discovery else "off (listed meetings only)",
        ]
        rows.append(_row(cells))
    headers = ("App", "Polling", "Interval", "Meetings", "Planned", "Token from", "Discovery")
    return "<h2>Apps</h2>\n" + _table(headers, rows), total


def _budget_section(health: HealthSnapshot, config: Config, demand: float, now: float) -> str:
    budget = health.budget_per_second
    use = f" ({100 * demand / budget:.0f} % of the budget)" if budget > 0 else ""
    limit = config.api.rate_limit
    sent = sum(health.requests.values())
    codes = _counts(dict(sorted(health.requests.items())))
    if health.rate_limited_until > now:
        left = health.rate_limited_until - now
        paused = (
            f'<p class="paused">Rate limited: paused until {_e(_utc(health.rate_limited_until))}'
            f" ({left:.0f} s from now).</p>"
        )
    else:
        paused = "<p>Not rate limited.</p>"
    skipped = _counts(health.skipped) or "none"
    lines = [
        f"Budget {budget:.2f} req/s over every token "
        f"({limit.requests} per {_num(limit.period_seconds)} s per token, "
        f"{_num(100 * limit.reserve_fraction)} % reserved); planned {demand:.2f} req/s{use}.",
        f"Requests sent {sent}{': ' + codes if codes else ''}; {health.in_flight} in flight; "
        f"{health.retries} retries; polls skipped: {skipped}.",
    ]
    body = "".join(f"<p>{_e(line)}</p>" for line in lines)
    return f"<h2>Request budget</h2>\n{body}\n{paused}\n"


# -- the pages ------------------------------------------------------------------------------------


def _header(
    version: str, telemetry_path: str, health: HealthSnapshot, now: float, answered: float | None
) -> str:
    links = [(telemetry_path, "Metrics"), ("/config", "Config")]
    links += [("/-/healthy", "Health"), ("/-/ready", "Readiness")]
    nav = " · ".join(f'<a href="{_e(href)}">{_e(text)}</a>' for href, text in links)
    reload = "ok" if health.reload_ok else "FAILED (running the previous config)"
    api = f"{_utc(answered)} ({_age(now, answered)})" if answered is not None else "none yet"
    return (
        f"<h1>RealtimeKit Exporter</h1>\n<p>Version {_e(version)} · {nav}</p>\n"
        f"<p>Page made {_e(_utc(now))}; last config load {_e(reload)}, "
        f"config loaded {_e(_utc(health.reload_success_time))}; "
        f"last valid API answer {_e(api)}.</p>\n"
    )


def _webhooks_section(webhooks: Webhooks | None, now: float) -> str:
    """The receiver, and per app whether its webhooks are healthy and its last event."""
    if webhooks is None:
        return "<h2>Webhooks</h2>\n<p>Off: no <code>webhooks.listen_address</code>.</p>\n"
    rows = [
        _row([
            f"{_e(app[0])}/<br>{_e(app[1])}",
            "healthy (reconcile interval)" if app in webhooks.healthy else "not healthy",
            _e(_age(now, webhooks.last_event.get(app)) if app in webhooks.last_event else "never"),
        ])
        for app in webhooks.apps
    ]  # fmt: skip
    head = f"<h2>Webhooks</h2>\n<p>Receiver on {_e(webhooks.listen)}.</p>\n"
    return head + _table(("App", "Health", "Last event"), rows)


@dataclass(frozen=True)
class Webhooks:
    """What the status page shows of the webhook receiver."""

    listen: str
    apps: list[tuple[str, str]]  # apps that take webhooks
    healthy: frozenset[tuple[str, str]]
    last_event: Mapping[tuple[str, str], float]


def status_page(
    *,
    states: Mapping[MeetingKey, MeetingState],
    health: HealthSnapshot,
    config: Config,
    now: float,
    stale_after: float,
    version: str,
    telemetry_path: str,
    limit: int = 100,
    note: str = "",
    webhooks: Webhooks | None = None,
    media: MediaView | None = None,
) -> str:
    """The HTML status page (served on ``/``): header, apps, request budget, then at most
    ``limit`` meetings, failing first, then live, then idle, then unknown, and a line
    ``… and N more (X failing, Y live, Z idle)`` for the rest. ``now`` is Unix time; ``note``
    is one more line for the header (the shard this process is); ``media`` the meetings'
    recording and livestream states (None: neither is watched)."""
    found = _meetings(states, now, stale_after, limit)
    apps, demand = _apps_section(config, health, found.per_app)
    body = (
        _header(version, telemetry_path, health, now, _last_answer(states))
        + (f"<p>{_e(note)}</p>\n" if note else "")
        + apps
        + _budget_section(health, config, demand, now)
        + _webhooks_section(webhooks, now)
        + _meetings_section(found, now, media)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        '<meta name="generator" content="realtimekit-exporter status page">\n'
        f"<title>RealtimeKit Exporter</title><style>{_CSS}</style></head>\n"
        f'<body id="status">\n{body}</body></html>\n'
    )


def _last_answer(states: Mapping[MeetingKey, MeetingState]) -> float | None:
    """Unix time of the newest valid API answer of any meeting (None: none yet)."""
    return max(
        (s.last_success for s in states.values() if s.last_success is not None), default=None
    )


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    return (
        any(word in lowered for word in SECRET_WORDS)
        or lowered == "token"
        or lowered.endswith("_token")
    )


def redact(data: Any) -> Any:
    """A copy of ``data`` (parsed YAML/JSON) with the value of every secret-looking key replaced
    by ``"<secret>"``, at any depth; unset values (``None``, ``""``) stay as they are.

    A key is secret when it contains ``password``, ``secret``, ``credential`` or ``private_key``,
    or is ``token`` or ends in ``_token`` (case-insensitive). ``token_env`` and ``token_file`` are
    kept: they name where the token comes from (a variable's name, a file's path), not the token.
    """
    if isinstance(data, Mapping):
        return {
            k: REDACTED if _is_secret(str(k)) and v not in (None, "") else redact(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


def config_page(config: Config) -> str:
    """The running config as YAML, every secret redacted by :func:`redact` (served as text/plain
    on ``/config``). The token itself is never in the config object. Values left to their
    defaults are shown as they are in force: where each token comes from, the staleness window."""
    data = config.model_dump(mode="json")
    data["poll"]["stale_after_seconds"] = config.poll.stale_after
    if data["api"].get("token_env") is None and data["api"].get("token_file") is None:
        data["api"]["token_env"] = DEFAULT_TOKEN_ENV
    return yaml.safe_dump(redact(data), sort_keys=False)
