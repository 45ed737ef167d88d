"""Turn the store into Prometheus metric families, fresh on every scrape.

``collect()`` reads one snapshot of the store and never does I/O, so a scrape is fast and cannot
hang on the API; a meeting that left the store is simply not in the next scrape.

At 10,000 meetings (~85k samples) prometheus_client's generic rendering of those families takes
over a second, so ``/metrics`` is served by :func:`metrics_response` instead: the same bytes (in
the format prometheus_client negotiates), with the per-meeting families written by
:meth:`MeetingCollector.render_parts` from per-meeting fragments cached on the (immutable)
:class:`~exporter.store.MeetingState` they were made from, and every other collector
(``process_*``, ``python_*``, ``realtimekit_api_*``, …) rendered by prometheus_client as before::

    >>> parts, content_type = exposition(registry, "application/openmetrics-text")
    >>> content_type
    'application/openmetrics-text; version=1.0.0; charset=utf-8'
    >>> b"".join(parts).endswith(b"# EOF\n")
    True

Rendering stays a pure function of the store snapshot and the clock; the caches only remember
what an earlier call made. ``collect()`` stays the reference: tests check that ``render()`` equals
prometheus_client's rendering of it byte for byte. Figures and design notes: BENCHMARKS.md.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import Final, NamedTuple
from urllib.parse import parse_qs

from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from exporter import __version__
from exporter.errors import REASONS
from exporter.health import DURATION_BUCKETS
from exporter.model import SESSION_STATUSES, Answer, MeetingKey, Session
from exporter.poller import AppStats, PollerStats
from exporter.store import Labels, MeetingState, Store

#: The per-meeting families in output order: name, type, HELP (the polling note is added).
_FAMILIES: Final = (
    ("realtimekit_up", "gauge", "1 if the last poll of the meeting got a valid answer."),
    (
        "realtimekit_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last valid answer for the meeting.",
    ),
    ("realtimekit_poll_duration_seconds", "gauge", "Duration of the last poll of the meeting."),
    ("realtimekit_poll_errors", "counter", "Failed polls of the meeting, by reason."),
    (
        "realtimekit_session_active",
        "gauge",
        "1 if the meeting has an active session, 0 if the API says it has none.",
    ),
    (
        "realtimekit_session_live_participants",
        "gauge",
        "Participants in the meeting's session now (0 when there is no active session).",
    ),
    (
        "realtimekit_session_max_concurrent_participants",
        "gauge",
        "Most participants at once in the meeting's current session.",
    ),
    (
        "realtimekit_session_consumed_seconds",
        "gauge",
        "Participant time consumed by the meeting's current session, in seconds.",
    ),
    ("realtimekit_session_status", "gauge", "Status of the meeting's current session."),
    ("realtimekit_session_info", "gauge", "Facts about the meeting's current session."),
    (
        "realtimekit_session_start_timestamp_seconds",
        "gauge",
        "Unix time the meeting's current session started.",
    ),
)
# Indexes into _FAMILIES.
UP, LAST_OK, DURATION, ERRORS, ACTIVE, LIVE, PEAK, CONSUMED, STATUS, INFO, STARTED = range(11)
_BUILD_INFO: Final = (
    "realtimekit_exporter_build_info",
    "gauge",
    "Version of the exporter; always 1.",
)
#: Sample names: a counter's samples end in ``_total``.
_SAMPLE_NAMES: Final = tuple(n + "_total" if t == "counter" else n for n, t, _ in _FAMILIES)
_OM_EOF: Final = b"# EOF\n"
#: gzip level of /metrics answers: 1, not prometheus_client's 9 (BENCHMARKS.md: on 16 MB, a
#: quarter of the time for 17 % more bytes).
GZIP_LEVEL: Final = 1
#: How prometheus_client writes a sample value.
_go_float: Final[Callable[[float], str]] = floatToGoString


class MeetingCollector(Collector):
    """Exports the contract's per-meeting metrics and ``realtimekit_exporter_build_info``."""

    def __init__(
        self,
        store: Store,
        *,
        interval_seconds: Callable[[], float],
        stale_after_seconds: Callable[[], float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._interval = interval_seconds
        self._stale_after = stale_after_seconds
        self._clock = clock
        self._render_lock = threading.Lock()  # concurrent scrapes take turns with the caches
        self._cache: dict[int, _Entry] = {}  # id(state) -> its fragment
        self._texts: dict[MeetingKey, _LabelText] = {}
        self._order: list[_Entry] = []  # the fragments of the last render, in store order
        self._blocks: list[bytes] = []  # the body of each family in the last render
        #: gzip for /metrics that compresses each family's body once, not once per scrape.
        self.gzip = PartsGzip()

    def collect(self) -> Iterator[Metric]:
        _, states = self._store.snapshot()
        now = self._clock()
        stale_after = self._stale_after()
        every = f" Polled every {self._interval():g} seconds."
        families = [Metric(name, doc + every, kind) for name, kind, doc in _FAMILIES]
        up, last_ok, duration, errors, active, live, peak, consumed, status, info, started = (
            f.samples for f in families
        )

        for key, state in states.items():
            labels = {"account_id": key.account_id, "app_id": key.app_id}
            labels["meeting_id"] = key.meeting_id
            labels.update(state.labels)
            if state.up is not None:
                up.append(Sample("realtimekit_up", labels, 1.0 if state.up else 0.0))
            if state.poll_duration is not None:
                duration.append(
                    Sample("realtimekit_poll_duration_seconds", labels, state.poll_duration)
                )
            if state.last_success is not None:
                last_ok.append(
                    Sample("realtimekit_last_success_timestamp_seconds", labels, state.last_success)
                )
            for reason, count in zip(REASONS, state.errors, strict=True):
                if count:
                    errors.append(
                        Sample("realtimekit_poll_errors_total", {**labels, "reason": reason}, count)
                    )
            answer = state.fresh_answer(now, stale_after)
            if answer is None:
                continue
            if not isinstance(answer, Session):
                active.append(Sample("realtimekit_session_active", labels, 0.0))
                live.append(Sample("realtimekit_session_live_participants", labels, 0.0))
                continue
            s = answer
            active.append(Sample("realtimekit_session_active", labels, 1.0))
            live.append(
                Sample("realtimekit_session_live_participants", labels, s.live_participants)
            )
            if s.max_concurrent_participants is not None:
                peak.append(
                    Sample(
                        "realtimekit_session_max_concurrent_participants",
                        labels,
                        s.max_concurrent_participants,
                    )
                )
            if s.minutes_consumed is not None:
                consumed.append(
                    Sample("realtimekit_session_consumed_seconds", labels, s.minutes_consumed * 60)
                )
            for value in SESSION_STATUSES:
                status.append(
                    Sample(
                        "realtimekit_session_status",
                        {**labels, "status": value},
                        1.0 if s.status == value else 0.0,
                    )
                )
            info_labels = {
                **labels,
                "session_id": s.id,
                "type": s.type or "",
                "meeting_display_name": s.meeting_display_name or "",
            }
            info.append(Sample("realtimekit_session_info", info_labels, 1.0))
            if s.started_at is not None:
                started.append(
                    Sample("realtimekit_session_start_timestamp_seconds", labels, s.started_at)
                )

        yield from families
        name, kind, doc = _BUILD_INFO
        build = Metric(name, doc, kind)
        build.samples.append(Sample(name, {"version": __version__}, 1.0))
        yield build

    def render(self, *, openmetrics: bool = False) -> bytes:
        """What prometheus_client renders from :meth:`collect`, byte for byte (text format, or
        OpenMetrics without the closing ``# EOF``), but from cached per-meeting fragments.

        A meeting's fragment (its lines of every family) is rebuilt only when its state object
        was replaced (a poll finished, its labels changed) or its answer turned stale since the
        last render; everything else is a join of cached bytes. The label text of a meeting is
        kept for as long as its static labels are the same.
        """
        return b"".join(self.render_parts(openmetrics=openmetrics))

    def render_parts(self, *, openmetrics: bool = False) -> list[bytes]:
        """:meth:`render` as parts to send one after the other. A family's body is joined again
        only when one of its lines changed (most polls change only the time of the last answer,
        the poll duration and the consumed time), and the parts are never copied into one."""
        with self._render_lock:
            _, states = self._store.snapshot()
            now = self._clock()
            stale_after = self._stale_after()
            interval = self._interval()
            old, texts, before = self._cache, self._texts, self._order
            cache: dict[int, _Entry] = {}
            order: list[_Entry] = []
            # A family is joined again when a line at some place differs from the last render's
            # (a poll changed it, or meetings moved); all of them when meetings came or went.
            everything = len(before) != len(states) or not self._blocks
            dirty = [everything] * len(_FAMILIES)
            for pos, (key, state) in enumerate(states.items()):
                # Keyed by id(state): cheap to hash, and safe because the entry holds the state.
                entry = old.get(id(state))
                answer = state.fresh_answer(now, stale_after)
                if (
                    entry is None
                    or entry.state is not state
                    or entry.key is not key
                    or entry.fresh is not (answer is not None)
                ):
                    text = texts.get(key)
                    if text is None or text.labels != state.labels:
                        text = texts[key] = _LabelText(key, state.labels)
                    entry = _fragment(text, key, state, answer)
                if not everything and before[pos] is not entry:  # polled, or moved
                    _mark_changed(dirty, before[pos], entry)
                cache[id(state)] = entry
                order.append(entry)
            blocks = list(self._blocks) or [b""] * len(_FAMILIES)
            for i, changed in enumerate(dirty):
                if changed or everything:
                    # Not zip(*order): its 10,000 iterators would wake the garbage collector.
                    blocks[i] = b"".join(map(itemgetter(_FIRST_LINE + i), order))
            self._cache, self._order, self._blocks = cache, order, blocks
            if len(texts) > len(states):
                self._texts = {key: text for key, text in texts.items() if key in states}
        every = f" Polled every {interval:g} seconds."
        out: list[bytes] = []
        for (name, kind, doc), block in zip(_FAMILIES, blocks, strict=True):
            out.append(_header(name, kind, doc + every, openmetrics))
            out.append(block)
        name, kind, doc = _BUILD_INFO
        out.append(_header(name, kind, doc, openmetrics))
        out.append(_line(name, {"version": __version__}, 1.0))
        return out


def _mark_changed(dirty: list[bool], before: _Entry, after: _Entry) -> None:
    """Mark the families whose lines at this place differ from the last render's."""
    for i in range(len(dirty)):
        if not dirty[i] and before[_FIRST_LINE + i] != after[_FIRST_LINE + i]:
            dirty[i] = True


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[list[bytes], str] | None:
    """The registry rendered for an HTTP ``Accept`` header, as prometheus_client would render it
    (same format negotiation, same bytes once joined), with the per-meeting families of every
    :class:`MeetingCollector` from :meth:`MeetingCollector.render_parts`. Returns the parts of
    the body and its content type, or ``None`` when only prometheus_client's own path can serve
    it (an escaping scheme other than ``underscores``/``allow-utf-8``, a target-info registry,
    no MeetingCollector)."""
    rendered = _exposition(registry, accept)
    return None if rendered is None else rendered[:2]


def _exposition(
    registry: CollectorRegistry, accept: str | None
) -> tuple[list[bytes], str, MeetingCollector] | None:
    encoder, content_type = choose_encoder(accept or "")
    media, *params = (part.strip() for part in content_type.split(";"))
    escaping = dict(p.split("=", 1) for p in params if "=" in p).get("escaping", "underscores")
    # Our metric and label names are legacy-valid (config.py checks static label names), and
    # for such names these two schemes change nothing; "dots" and "values" would.
    if escaping not in ("underscores", "allow-utf-8"):
        return None
    collectors = _collectors(registry)
    meetings = [c for c in collectors or () if isinstance(c, MeetingCollector)]
    if not meetings:
        return None
    openmetrics = media == "application/openmetrics-text"
    out: list[bytes] = []
    others: list[Collector] = []

    def flush() -> None:
        if others:
            text = encoder(_View(list(others)))
            out.append(text.removesuffix(_OM_EOF) if openmetrics else text)
            others.clear()

    for collector in collectors or ():
        if isinstance(collector, MeetingCollector):
            flush()
            out.extend(collector.render_parts(openmetrics=openmetrics))
        else:
            others.append(collector)
    flush()
    if openmetrics:
        out.append(_OM_EOF)
    return out, content_type, meetings[0]


def metrics_response(
    registry: CollectorRegistry, *, accept: str | None, accept_encoding: str | None, query: str
) -> tuple[list[tuple[str, str]], list[bytes]] | None:
    """Headers and body parts of a ``GET /metrics`` answer, as prometheus_client's WSGI app
    would send them (its negotiation, gzip when accepted), from :func:`exposition`. ``None``
    when only prometheus_client's app can answer: ``name[]`` filters, or :func:`exposition`
    declines."""
    if "name[]" in parse_qs(query):
        return None
    rendered = _exposition(registry, accept)
    if rendered is None:
        return None
    body, content_type, collector = rendered
    headers = [("Content-Type", content_type)]
    if gzip_accepted(accept_encoding or ""):
        body = [collector.gzip.compress(body)]
        headers.append(("Content-Encoding", "gzip"))
    headers.append(("Content-Length", str(sum(map(len, body)))))
    return headers, body


class PartsGzip:
    """gzip of a body given as parts, compressing each part on its own (raw deflate ending in a
    sync flush: such streams can be concatenated) and remembering the result for as long as the
    same part (the same bytes object) keeps coming back. A family whose lines did not change
    since the last scrape is not compressed again; one gzip stream of the joined body would
    compress all 16 MB of 10,000 meetings on every scrape.

        >>> gzip.decompress(PartsGzip().compress([b"a", b"b"]))
        b'ab'
    """

    #: Parts smaller than this are compressed every time (headers, other collectors).
    MIN_CACHED = 4096
    _HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no mtime, unknown OS
    _LAST_BLOCK = b"\x03\x00"  # an empty final block

    def __init__(self, level: int = GZIP_LEVEL) -> None:
        self._level = level
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[bytes, bytes]] = {}  # id(part) -> (part, deflated)

    def compress(self, parts: Iterable[bytes]) -> bytes:
        with self._lock:
            old = self._cache
        cache: dict[int, tuple[bytes, bytes]] = {}
        out = [self._HEADER]
        crc = size = 0
        for part in parts:
            if not part:
                continue
            hit = old.get(id(part))
            if hit is None or hit[0] is not part:  # held in the cache, so its id is its own
                compressor = zlib.compressobj(self._level, zlib.DEFLATED, -zlib.MAX_WBITS)
                hit = (part, compressor.compress(part) + compressor.flush(zlib.Z_SYNC_FLUSH))
            if len(part) >= self.MIN_CACHED:
                cache[id(part)] = hit
            out.append(hit[1])
            crc = zlib.crc32(part, crc)
            size += len(part)
        out.append(self._LAST_BLOCK)
        out.append(struct.pack("<II", crc, size & 0xFFFFFFFF))
        with self._lock:
            self._cache = cache  # parts gone from the body leave the cache here
        return b"".join(out)


def _collectors(registry: CollectorRegistry) -> list[Collector] | None:
    """The registry's collectors in registration order (its ``collect()`` order), or ``None``
    when that cannot be known. prometheus_client has no public accessor for them."""
    registered = getattr(registry, "_collector_to_names", None)
    if not isinstance(registered, dict) or registry.get_target_info():
        return None
    try:
        return list(registered)
    except RuntimeError:  # registered to while we read: let prometheus_client do it
        return None


class _View:
    """Some collectors of a registry, for prometheus_client's encoders."""

    def __init__(self, collectors: list[Collector]) -> None:
        self._collectors = collectors

    def collect(self) -> Iterable[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


class _LabelText:
    """A meeting's escaped, sorted label text and the lines that depend only on it or on the
    identity of its session. Made again when the meeting's static labels change."""

    __slots__ = ("base", "key", "labels", "session", "status")

    def __init__(self, key: MeetingKey, labels: Labels) -> None:
        self.key = key
        self.labels = labels
        self.base = "{" + _label_text(self.with_labels()) + "} "
        self.status: dict[str | None, bytes] = {}  # current status (None: another) -> lines
        # The last session seen, with its info and start-time lines.
        self.session: tuple[Session, bytes, bytes] | None = None

    def with_labels(self, **extra: str) -> dict[str, str]:
        """The meeting's labels as collect() builds them, plus ``extra``."""
        key = self.key
        labels = {"account_id": key.account_id, "app_id": key.app_id, "meeting_id": key.meeting_id}
        labels.update(self.labels)
        labels.update(extra)
        return labels


class _Entry(NamedTuple):
    """A meeting's lines of each family of _FAMILIES (b"" for none), and what they were made
    from. One flat tuple: at 10,000 meetings every extra object per poll feeds the garbage
    collector."""

    key: MeetingKey
    state: MeetingState
    fresh: bool  # the state's answer was not stale
    up: bytes
    last_ok: bytes
    duration: bytes
    errors: bytes
    active: bytes
    live: bytes
    peak: bytes
    consumed: bytes
    status: bytes
    info: bytes
    started: bytes


_FIRST_LINE: Final = _Entry._fields.index("up")


def _escape(value: str) -> str:
    """A label value as the exposition formats want it (and prometheus_client writes it)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_text(labels: dict[str, str]) -> str:
    """``a="1",b="2"``: sorted by name, like prometheus_client."""
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))


def _line(name: str, labels: dict[str, str], value: float) -> bytes:
    return f"{name}{{{_label_text(labels)}}} {_value(float(value))}\n".encode()


_INF: Final = float("inf")
#: Whole numbers (participant counts) are common; their text is their repr.
_WHOLE: Final = {float(n): repr(float(n)) for n in range(1, 1001)}
#: Go's exponent for a number whose repr has its dot at this index (7 to 16).
_EXPONENTS: Final = tuple(f"e+{dot - 1:02d}" for dot in range(17))


def _value(value: float) -> str:
    """prometheus_client's ``floatToGoString`` for a float, faster for what we export."""
    text = _WHOLE.get(value)
    if text is not None:
        return text
    if 1e6 <= value < 1e16:  # where Go writes an exponent and Python's repr does not
        text = repr(value)
        dot = text.find(".")
        digits = (text[:dot] + text[dot + 1 :]).rstrip("0")
        mantissa = digits[0] + "." + digits[1:] if len(digits) > 1 else digits
        return mantissa + _EXPONENTS[dot]
    if -_INF < value < _INF:
        return repr(value)
    return _go_float(value)  # infinities and NaN


_UP, _LAST_OK, _DURATION, _ACTIVE, _LIVE, _PEAK, _CONSUMED, _STARTED = (
    _SAMPLE_NAMES[i] for i in (UP, LAST_OK, DURATION, ACTIVE, LIVE, PEAK, CONSUMED, STARTED)
)


def _fragment(
    text: _LabelText, key: MeetingKey, state: MeetingState, answer: Answer | None
) -> _Entry:
    """The meeting's lines of each family, exactly as collect() + prometheus_client write them.
    (The hot path of a scrape when most meetings were polled since the last one.)"""
    base = text.base
    up = last_ok = duration = errors = active = live = peak = consumed = b""
    status = info = started = b""
    if state.up is not None:
        up = f"{_UP}{base}{'1.0' if state.up else '0.0'}\n".encode()
    if state.last_success is not None:
        last_ok = f"{_LAST_OK}{base}{_value(state.last_success)}\n".encode()
    if state.poll_duration is not None:
        duration = f"{_DURATION}{base}{_value(state.poll_duration)}\n".encode()
    if any(state.errors):
        errors = b"".join(
            _line(_SAMPLE_NAMES[ERRORS], text.with_labels(reason=reason), count)
            for reason, count in zip(REASONS, state.errors, strict=True)
            if count
        )
    if isinstance(answer, Session):
        s = answer
        active = f"{_ACTIVE}{base}1.0\n".encode()
        live = f"{_LIVE}{base}{_value(s.live_participants)}\n".encode()
        if s.max_concurrent_participants is not None:
            peak = f"{_PEAK}{base}{_value(s.max_concurrent_participants)}\n".encode()
        if s.minutes_consumed is not None:
            consumed = f"{_CONSUMED}{base}{_value(s.minutes_consumed * 60)}\n".encode()
        current = s.status if s.status in SESSION_STATUSES else None
        status = text.status.get(current, b"")
        if not status:
            status = text.status[current] = b"".join(
                _line(
                    _SAMPLE_NAMES[STATUS],
                    text.with_labels(status=value),
                    1.0 if current == value else 0.0,
                )
                for value in SESSION_STATUSES
            )
        if text.session is None or not _same_session(text.session[0], s):
            info_labels = text.with_labels(
                session_id=s.id,
                type=s.type or "",
                meeting_display_name=s.meeting_display_name or "",
            )
            info = _line(_SAMPLE_NAMES[INFO], info_labels, 1.0)
            if s.started_at is not None:
                started = f"{_STARTED}{base}{_value(s.started_at)}\n".encode()
            text.session = (s, info, started)
        _, info, started = text.session
    elif answer is not None:  # no active session
        active = f"{_ACTIVE}{base}0.0\n".encode()
        live = f"{_LIVE}{base}0.0\n".encode()
    return _Entry(
        key, state, answer is not None,
        up, last_ok, duration, errors, active, live, peak, consumed, status, info, started,
    )  # fmt: skip


def _same_session(a: Session, b: Session) -> bool:
    """Same info and start-time lines (the rest of a session changes with every poll)."""
    return a is b or (
        a.id == b.id
        and a.type == b.type
        and a.meeting_display_name == b.meeting_display_name
        and a.started_at == b.started_at
    )


def _header(name: str, kind: str, doc: str, openmetrics: bool) -> bytes:
    """HELP and TYPE lines of a family, escaped as prometheus_client escapes them."""
    doc = doc.replace("\\", r"\\").replace("\n", r"\n")
    if openmetrics:
        doc = doc.replace('"', r"\"")
    elif kind == "counter":
        name += "_total"
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n".encode()


class ExporterCollector(Collector):
    """The exporter's own health: API requests, budget, rate limiting, skipped polls, the
    config's reload status and each discovering app's numbers."""

    def __init__(
        self,
        stats: Callable[[], PollerStats],
        reload_status: Callable[[], tuple[bool, float]],
    ) -> None:
        self._stats = stats
        self._reload_status = reload_status

    def collect(self) -> Iterator[Metric]:
        st = self._stats()
        yield from _reload_metrics(*self._reload_status())
        yield from _app_metrics(st.apps)

        def single(name: str, kind: str, doc: str, val: float) -> Metric:
            metric = Metric(name, doc, kind)
            sample_name = name + "_total" if kind == "counter" else name
            metric.samples.append(Sample(sample_name, {}, val))
            return metric

        requests = Metric(
            "realtimekit_api_requests",
            "API requests sent, by HTTP status code (or timeout, connect, error).",
            "counter",
        )
        for code, count in sorted(st.requests.items()):
            requests.samples.append(Sample("realtimekit_api_requests_total", {"code": code}, count))
        yield requests

        hist = Metric(
            "realtimekit_api_request_duration_seconds", "Duration of API requests.", "histogram"
        )
        cumulative = 0
        for bound, count in zip(
            (*DURATION_BUCKETS, float("inf")), st.duration_buckets, strict=True
        ):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            hist.samples.append(
                Sample("realtimekit_api_request_duration_seconds_bucket", {"le": le}, cumulative)
            )
        hist.samples.append(
            Sample("realtimekit_api_request_duration_seconds_count", {}, cumulative)
        )
        hist.samples.append(
            Sample("realtimekit_api_request_duration_seconds_sum", {}, st.duration_sum)
        )
        yield hist

        yield single(
            "realtimekit_api_requests_in_flight",
            "gauge",
            "API requests in flight now.",
            st.in_flight,
        )
        yield single(
            "realtimekit_api_budget_requests_per_second",
            "gauge",
            "Requests per second the exporter allows itself (the tokens' budgets, less reserves).",
            st.budget_per_second,
        )
        yield single(
            "realtimekit_api_rate_limited_until_timestamp_seconds",
            "gauge",
            "Unix time until which the API told us to send nothing (429); 0 when not limited.",
            st.rate_limited_until,
        )
        yield single(
            "realtimekit_poll_retries", "counter", "Quick retries of failed polls.", st.retries
        )
        skipped = Metric(
            "realtimekit_polls_skipped",
            "Polls not sent: backoff (the meeting keeps failing) or overrun (the previous poll "
            "of the meeting had not finished).",
            "counter",
        )
        for reason in ("backoff", "overrun"):
            skipped.samples.append(
                Sample(
                    "realtimekit_polls_skipped_total", {"reason": reason}, st.skipped.get(reason, 0)
                )
            )
        yield skipped
        effective = Metric(
            "realtimekit_poll_effective_interval_seconds",
            "Seconds between polls of each meeting of the app: the configured interval, "
            "stretched when the request budget cannot sustain it.",
            "gauge",
        )
        for (account_id, app_id), seconds in sorted(st.effective_intervals.items()):
            effective.samples.append(
                Sample(
                    "realtimekit_poll_effective_interval_seconds",
                    {"account_id": account_id, "app_id": app_id},
                    seconds,
                )
            )
        yield effective


def _reload_metrics(ok: bool, when: float) -> Iterator[Metric]:
    """The config's reload status."""
    for name, doc, val in (
        (
            "realtimekit_config_last_reload_successful",
            "1 if the last config reload (or the start) succeeded, 0 if the running config "
            "was kept because the new one was invalid.",
            1.0 if ok else 0.0,
        ),
        (
            "realtimekit_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
            when,
        ),
    ):
        metric = Metric(name, doc, "gauge")
        metric.samples.append(Sample(name, {}, val))
        yield metric


def _app_metrics(apps: dict[tuple[str, str], AppStats]) -> Iterator[Metric]:
    """Per-app discovery numbers."""
    families = (
        ("realtimekit_discovery_up", "gauge", "1 if the app's last discovery cycle succeeded."),
        ("realtimekit_app_live_sessions", "gauge", "Live sessions of the app, as the API "
         "reported them (all of them, not only the exported ones)."),
        ("realtimekit_app_live_participants", "gauge", "Participants in all live sessions "
         "the discovery listing returned."),
        ("realtimekit_discovery_duration_seconds", "gauge", "Duration of the app's last "
         "discovery cycle."),
        ("realtimekit_discovery_pages", "counter", "Pages of sessions read by discovery."),
        ("realtimekit_discovery_confirmations", "counter", "Active-session calls made to "
         "confirm a meeting that was live and is not listed any more."),
        ("realtimekit_discovery_dropped_meetings", "counter", "Listed meetings not exported "
         "because of discover.max_meetings, summed over cycles."),
        ("realtimekit_discovery_errors", "counter", "Failed discovery cycles, by reason."),
    )  # fmt: skip
    metrics = {name: Metric(name, doc, kind) for name, kind, doc in families}

    def add(name: str, labels: dict[str, str], val: float) -> None:
        suffix = "_total" if metrics[name].type == "counter" else ""
        metrics[name].samples.append(Sample(name + suffix, labels, val))

    for (account_id, app_id), app in sorted(apps.items()):
        labels = {"account_id": account_id, "app_id": app_id}
        if app.up is not None:
            add("realtimekit_discovery_up", labels, 1.0 if app.up else 0.0)
            add("realtimekit_discovery_duration_seconds", labels, app.duration)
        if app.up:
            add("realtimekit_app_live_sessions", labels, app.live_sessions)
            add("realtimekit_app_live_participants", labels, app.live_participants)
        add("realtimekit_discovery_pages", labels, app.pages)
        add("realtimekit_discovery_confirmations", labels, app.confirmations)
        add("realtimekit_discovery_dropped_meetings", labels, app.dropped)
        for reason, count in sorted(app.errors.items()):
            add("realtimekit_discovery_errors", {**labels, "reason": reason}, count)
    yield from metrics.values()
