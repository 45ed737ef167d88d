"""The metrics contract: what every meeting's state and the exporter's health look like as
Prometheus families. Nothing here does I/O or knows HTTP; it reads the store and the health
snapshot, once per scrape.

:data:`FAMILIES` is the per-meeting contract, written once: name, type, HELP and how the samples
are read from a meeting's state. Two renderers read it:

- :meth:`MeetingCollector.collect` builds prometheus_client families (the reference);
- :meth:`MeetingCollector.render_parts` writes the same bytes from per-meeting fragments cached
  on the (immutable) :class:`~exporter.store.MeetingState` they were made from, so that a scrape
  of 10,000 meetings is a join of cached bytes (BENCHMARKS.md). Tests check it against
  prometheus_client's rendering of ``collect()`` byte for byte.

:class:`ExporterCollector` exports the exporter's own health (:mod:`exporter.health`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from exporter import __version__
from exporter.errors import REASONS
from exporter.exposition import encodable, go_float, header, label_text, line, wanted
from exporter.health import DURATION_BUCKETS, AppHealth, CoordinationState, HealthSnapshot
from exporter.model import SESSION_STATUSES, Answer, MeetingKey, Session
from exporter.store import Labels, MeetingState, Store

if TYPE_CHECKING:
    from exporter.webhooks import WebhookCounts

log = logging.getLogger(__name__)

Extra = tuple[tuple[str, str], ...]  # labels a family adds to the meeting's own
# Readers get the meeting's state and its fresh answer (a Session for session-only families).
Value = Callable[[MeetingState, Any], float | None]
Samples = Callable[[MeetingState, Any], tuple[tuple[Extra, float], ...]]
Key = Callable[[MeetingState, Any], Hashable]


@dataclass(frozen=True, slots=True)
class Family:
    """One per-meeting family. ``value`` gives its one sample (``None``: no sample); families
    with labels of their own give ``samples`` instead, as ``(extra labels, value)`` pairs.
    ``answer`` is the meeting's last valid answer while it is fresh, else ``None``."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str
    value: Value | None = None
    samples: Samples | None = None
    #: What a labelled family's lines depend on: they are rendered once per distinct value.
    key: Key | None = None
    session_only: bool = False  # no sample unless the answer is a session (skipped fast)
    #: A one-sample family whose values repeat (0/1, participant counts, a start time): its
    #: line is rendered once per distinct value per meeting.
    repeats: bool = False
    sample_name: str = field(init=False)

    def __post_init__(self) -> None:
        name = self.name + "_total" if self.kind == "counter" else self.name
        object.__setattr__(self, "sample_name", name)


def _active(_: MeetingState, answer: Answer | None) -> float | None:
    return None if answer is None else float(isinstance(answer, Session))


def _live(_: MeetingState, answer: Answer | None) -> float | None:
    if answer is None:
        return None
    return answer.live_participants if isinstance(answer, Session) else 0.0


def _consumed(_: MeetingState, s: Session) -> float | None:
    return None if s.minutes_consumed is None else s.minutes_consumed * 60


def _errors(state: MeetingState, _: Answer | None) -> tuple[tuple[Extra, float], ...]:
    pairs = zip(REASONS, state.errors, strict=True)
    return tuple(((("reason", reason),), float(count)) for reason, count in pairs if count)


def _status(_: MeetingState, s: Session) -> tuple[tuple[Extra, float], ...]:
    return tuple(((("status", v),), 1.0 if s.status == v else 0.0) for v in SESSION_STATUSES)


def _info(_: MeetingState, s: Session) -> tuple[tuple[Extra, float], ...]:
    extra = (
        ("session_id", s.id),
        ("type", s.type or ""),
        ("meeting_display_name", s.meeting_display_name or ""),
    )
    return ((extra, 1.0),)


#: HELP of every per-meeting family ends so (static: the interval changes with the budget,
#: webhook health and reloads, and is a series of its own).
POLLED: Final = " Polled from the API; see realtimekit_poll_effective_interval_seconds."
#: The per-meeting families in output order. HELP gets :data:`POLLED` appended.
FAMILIES: Final = (
    Family(
        "realtimekit_up",
        "gauge",
        "1 if the last poll of the meeting got a valid answer.",
        value=lambda st, _: None if st.up is None else float(st.up),
        repeats=True,
    ),
    Family(
        "realtimekit_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last valid answer for the meeting.",
        value=lambda st, _: st.last_success,
    ),
    Family(
        "realtimekit_poll_duration_seconds",
        "gauge",
        "Duration of the last poll of the meeting.",
        value=lambda st, _: st.poll_duration,
    ),
    Family(
        "realtimekit_poll_errors",
        "counter",
        "Failed polls of the meeting, by reason.",
        samples=_errors,
        key=lambda st, _: st.errors,
    ),
    Family(
        "realtimekit_session_active",
        "gauge",
        "1 if the meeting has an active session, 0 if the API says it has none.",
        value=_active,
        repeats=True,
    ),
    Family(
        "realtimekit_session_live_participants",
        "gauge",
        "Participants in the meeting's session now (0 when there is no active session).",
        value=_live,
        repeats=True,
    ),
    Family(
        "realtimekit_session_max_concurrent_participants",
        "gauge",
        "Most participants at once in the meeting's current session.",
        value=lambda _, s: s.max_concurrent_participants,
        session_only=True,
    ),
    Family(
        "realtimekit_session_consumed_seconds",
        "gauge",
        "Participant time consumed by the meeting's current session, in seconds.",
        value=_consumed,
        session_only=True,
    ),
    Family(
        "realtimekit_session_status",
        "gauge",
        "Status of the meeting's current session.",
        samples=_status,
        key=lambda _, s: s.status,
        session_only=True,
    ),
    Family(
        "realtimekit_session_info",
        "gauge",
        "Facts about the meeting's current session.",
        samples=_info,
        key=lambda _, s: (s.id, s.type, s.meeting_display_name),
        session_only=True,
    ),
    Family(
        "realtimekit_session_start_timestamp_seconds",
        "gauge",
        "Unix time the meeting's current session started.",
        value=lambda _, s: s.started_at,
        session_only=True,
        repeats=True,
    ),
)
BUILD_INFO: Final = Family(
    "realtimekit_exporter_build_info", "gauge", "Version of the exporter; always 1."
)
RENDER_ERRORS: Final = Family(
    "realtimekit_exporter_render_errors",
    "counter",
    "Meetings left out of a scrape because their series could not be rendered (a bug, logged "
    "with a traceback); the other meetings are exported as usual.",
)
#: The lines of a fragment start after (key, state, fresh).
_FIRST_LINE: Final = 3
#: FAMILIES as the fast renderer walks them: one-sample families and labelled ones, those that
#: need a session apart (a meeting without one skips them at once).
_VALUES, _LABELLED = (
    tuple(
        tuple((i, f.sample_name, f.value, f.repeats) for i, f in enumerate(FAMILIES)
              if f.value is not None and f.session_only is session)
        for session in (False, True)
    ),
    tuple(
        tuple((i, f.key) for i, f in enumerate(FAMILIES)
              if f.value is None and f.session_only is session)
        for session in (False, True)
    ),
)  # fmt: skip


def meeting_labels(key: MeetingKey, labels: Labels, extra: Extra = ()) -> dict[str, str]:
    """A meeting's labels on every series: its ids, its static labels, the family's own (every
    value :func:`~exporter.exposition.encodable`)."""
    out = {"account_id": key.account_id, "app_id": key.app_id, "meeting_id": key.meeting_id}
    out.update(labels)
    out.update((name, encodable(value)) for name, value in extra)
    return out


class MeetingCollector(Collector):
    """Exports :data:`FAMILIES` for every meeting in the store, and the build info."""

    def __init__(
        self,
        store: Store,
        *,
        stale_after_seconds: Callable[[], float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._stale_after = stale_after_seconds
        self._clock = clock
        self._render_lock = threading.Lock()  # concurrent scrapes take turns with the caches
        self._cache: dict[int, tuple[object, ...]] = {}  # id(state) -> its fragment
        self._texts: dict[MeetingKey, _LabelText] = {}
        self._order: list[tuple[object, ...]] = []  # the last render's fragments, store order
        self._blocks: list[bytes] = []  # the body of each family in the last render
        self._render_errors = 0  # meetings left out of a scrape, summed over scrapes
        self._broken: set[MeetingKey] = set()  # meetings left out of the last scrape

    def collect(self) -> Iterator[Metric]:
        _, states = self._store.snapshot()
        now, stale_after = self._clock(), self._stale_after()
        families = [Metric(f.name, f.help + POLLED, f.kind) for f in FAMILIES]
        broken: list[tuple[MeetingKey, Exception]] = []
        for key, state in states.items():
            try:
                rows = _samples(key, state, state.fresh_answer(now, stale_after))
            except Exception as err:  # a bug in one meeting must not fail the scrape
                broken.append((key, err))
                continue
            for index, sample in rows:
                families[index].samples.append(sample)
        self._left_out(broken)
        yield from families
        build = Metric(BUILD_INFO.name, BUILD_INFO.help, BUILD_INFO.kind)
        build.samples.append(Sample(BUILD_INFO.name, {"version": __version__}, 1.0))
        yield build
        errors = Metric(RENDER_ERRORS.name, RENDER_ERRORS.help, RENDER_ERRORS.kind)
        errors.samples.append(Sample(RENDER_ERRORS.sample_name, {}, self._render_errors))
        yield errors

    def _left_out(self, broken: list[tuple[MeetingKey, Exception]]) -> None:
        """Count the meetings a render left out; log each one that the last render did not
        leave out (with its traceback), so a meeting that stays broken logs once."""
        self._render_errors += len(broken)
        new = [(key, err) for key, err in broken if key not in self._broken]
        for key, err in new[:3]:  # a few tracebacks tell the bug; the rest is a number
            log.error(
                "meeting %s/%s/%s left out of the scrape: its series could not be rendered",
                *(key.account_id, key.app_id, key.meeting_id),
                exc_info=err,
            )
        if len(new) > 3:
            log.error("%d more meetings left out of the scrape (the first 3 above)", len(new) - 3)
        self._broken = {key for key, _ in broken}

    def render(self, *, openmetrics: bool = False) -> bytes:
        """What prometheus_client renders from :meth:`collect`, byte for byte (text format, or
        OpenMetrics without the closing ``# EOF``)."""
        return b"".join(self.render_parts(openmetrics=openmetrics))

    def render_parts(
        self, *, openmetrics: bool = False, names: frozenset[str] | None = None
    ) -> list[bytes]:
        """:meth:`render` as parts to send one after the other, from cached fragments.

        A meeting's fragment (its lines of every family) is rebuilt only when its state object
        was replaced (a poll finished, its labels changed) or its answer turned stale since the
        last render. A family's body is joined again only when one of its lines changed (most
        polls change only the time of the last answer, the poll duration and the consumed
        time), and the parts are never copied into one."""
        if names is not None and not any(wanted(names, f.name, (f.sample_name,)) for f in FAMILIES):
            blocks = [b""] * len(FAMILIES)  # none wanted: nothing to refresh
        else:
            with self._render_lock:
                blocks = self._refresh()
        out: list[bytes] = []
        for family, block in zip(FAMILIES, blocks, strict=True):
            if wanted(names, family.name, (family.sample_name,)):
                out.append(header(family.name, family.kind, family.help + POLLED, openmetrics))
                out.append(block)
        if wanted(names, BUILD_INFO.name, ()):
            out.append(header(BUILD_INFO.name, BUILD_INFO.kind, BUILD_INFO.help, openmetrics))
            out.append(line(BUILD_INFO.name, {"version": __version__}, 1.0))
        if wanted(names, RENDER_ERRORS.name, (RENDER_ERRORS.sample_name,)):
            errors = RENDER_ERRORS
            out.append(header(errors.name, errors.kind, errors.help, openmetrics))
            out.append(line(errors.sample_name, {}, self._render_errors))
        return out

    def _refresh(self) -> list[bytes]:
        """Bring the fragments and family bodies up to date with the store (under the lock)."""
        _, states = self._store.snapshot()
        now, stale_after = self._clock(), self._stale_after()
        old, texts, before = self._cache, self._texts, self._order
        cache: dict[int, tuple[object, ...]] = {}
        order: list[tuple[object, ...]] = []
        # A family is joined again when a line at some place differs from the last render's
        # (a poll changed it, or meetings moved); all of them when meetings came or went.
        everything = len(before) != len(states) or not self._blocks
        dirty = [everything] * len(FAMILIES)
        broken: list[tuple[MeetingKey, Exception]] = []
        for key, state in states.items():
            # Keyed by id(state): cheap to hash, and safe because the entry holds the state.
            entry = old.get(id(state))
            answer = state.fresh_answer(now, stale_after)
            if (
                entry is None
                or entry[1] is not state
                or entry[0] is not key
                or (entry[2] is not (answer is not None))
            ):
                try:
                    entry = _fragment(texts, key, state, answer)
                except Exception as err:  # a bug in one meeting must not fail the scrape
                    broken.append((key, err))
                    continue
            pos = len(order)
            if not everything and pos < len(before) and before[pos] is not entry:  # polled, moved
                _mark_changed(dirty, before[pos], entry)
            cache[id(state)] = entry
            order.append(entry)
        if len(order) != len(before):  # meetings came, went or were left out
            dirty = [True] * len(FAMILIES)
        self._left_out(broken)
        blocks = list(self._blocks) or [b""] * len(FAMILIES)
        for i, changed in enumerate(dirty):
            if changed:
                # Not zip(*order): its 10,000 iterators would wake the garbage collector.
                blocks[i] = b"".join(map(itemgetter(_FIRST_LINE + i), order))
        self._cache, self._order, self._blocks = cache, order, blocks
        if len(texts) > len(states):
            self._texts = {key: text for key, text in texts.items() if key in states}
        return blocks


def _samples(
    key: MeetingKey, state: MeetingState, answer: Answer | None
) -> list[tuple[int, Sample]]:
    """A meeting's samples as ``collect()`` gives them: (index in FAMILIES, sample) pairs."""
    labels = meeting_labels(key, state.labels)
    session = isinstance(answer, Session)
    out = []
    for index, family in enumerate(FAMILIES):
        if family.session_only and not session:
            continue
        if family.value is not None:
            value = family.value(state, answer)
            if value is not None:
                out.append((index, Sample(family.sample_name, labels, float(value))))
            continue
        assert family.samples is not None
        for extra, value in family.samples(state, answer):
            sample_labels = meeting_labels(key, state.labels, extra)
            out.append((index, Sample(family.sample_name, sample_labels, float(value))))
    return out


def _fragment(
    texts: dict[MeetingKey, _LabelText], key: MeetingKey, state: MeetingState, answer: Answer | None
) -> tuple[object, ...]:
    """A meeting's fragment, from its (remembered) label text."""
    text = texts.get(key)
    if text is None or text.labels != state.labels:
        text = texts[key] = _LabelText(key, state.labels)
    return text.fragment(state, answer)


def _mark_changed(dirty: list[bool], before: tuple[object, ...], after: tuple[object, ...]) -> None:
    """Mark the families whose lines at this place differ from the last render's."""
    for i in range(len(dirty)):
        if not dirty[i] and before[_FIRST_LINE + i] != after[_FIRST_LINE + i]:
            dirty[i] = True


class _LabelText:
    """A meeting's escaped, sorted label text, and the lines of its labelled families (status,
    info, errors), which change far less often than its values. Made again when the meeting's
    static labels change."""

    __slots__ = ("base", "key", "labels", "lines")
    MAX_LINES = 64  # cached labelled lines per meeting; more (many sessions) start afresh

    def __init__(self, key: MeetingKey, labels: Labels) -> None:
        self.key = key
        self.labels = labels
        self.base = "{" + label_text(meeting_labels(key, labels)) + "} "
        self.lines: dict[tuple[int, Hashable], bytes] = {}

    def fragment(self, state: MeetingState, answer: Answer | None) -> tuple[object, ...]:
        """``(key, state, fresh, line of each family…)``, exactly as collect() and
        prometheus_client write them; ``b""`` for a family without samples. One flat tuple: at
        10,000 meetings every extra object per poll feeds the garbage collector. (The hot path
        of a scrape when most meetings were polled since the last one: the table is walked
        through :data:`_PLAN`, and session-only families are skipped without a call when there
        is no session.)"""
        out: list[bytes] = [b""] * len(FAMILIES)
        groups = (0, 1) if isinstance(answer, Session) else (0,)
        base, lines = self.base, self.lines
        for group in groups:
            for index, name, value_of, repeats in _VALUES[group]:
                value = value_of(state, answer)
                if value is None:
                    continue
                if not repeats:
                    out[index] = f"{name}{base}{go_float(value)}\n".encode()
                    continue
                cached = lines.get((index, value))
                if cached is None:
                    if len(lines) >= self.MAX_LINES:
                        lines.clear()
                    cached = lines[(index, value)] = f"{name}{base}{go_float(value)}\n".encode()
                out[index] = cached
            for index, key_of in _LABELLED[group]:
                cached = lines.get((index, key_of(state, answer)))  # type: ignore[misc]
                out[index] = cached if cached is not None else self._labelled(index, state, answer)
        return (self.key, state, answer is not None, *out)

    def _labelled(self, index: int, state: MeetingState, answer: Answer | None) -> bytes:
        """A labelled family's lines, rendered and remembered under the family's key."""
        family = FAMILIES[index]
        assert family.samples is not None and family.key is not None
        if len(self.lines) >= self.MAX_LINES:
            self.lines.clear()
        text = b"".join(
            line(family.sample_name, meeting_labels(self.key, self.labels, extra), value)
            for extra, value in family.samples(state, answer)
        )
        self.lines[(index, family.key(state, answer))] = text
        return text


class ExporterCollector(Collector):
    """The exporter's own health: API requests, budget, rate limiting, skipped polls, the
    config's reload status and each discovering app's numbers."""

    def __init__(
        self,
        health: Callable[[], HealthSnapshot],
        webhooks: Callable[[], WebhookCounts] | None = None,
        coordination: Callable[[], CoordinationState] | None = None,
    ) -> None:
        self._health = health
        self._webhooks = webhooks
        self._coordination = coordination

    def collect(self) -> Iterator[Metric]:
        st = self._health()
        yield _single(
            "realtimekit_config_last_reload_successful",
            "gauge",
            "1 if the last config reload (or the start) succeeded, 0 if the running config "
            "was kept because the new one was invalid.",
            1.0 if st.reload_ok else 0.0,
        )
        yield _single(
            "realtimekit_config_last_reload_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful config load.",
            st.reload_success_time,
        )
        yield from _app_metrics(st.apps)
        yield from _request_metrics(st)
        yield from _poll_metrics(st)
        yield _single(
            "realtimekit_exporter_shard_ordinal",
            "gauge",
            "This process' shard (--shard), 0 when not sharded.",
            st.shard,
        )
        yield _single(
            "realtimekit_exporter_total_shards",
            "gauge",
            "Number of shards the work is split into (--total-shards).",
            st.total_shards,
        )
        if self._webhooks is not None:
            yield from _webhook_metrics(self._webhooks())
        if self._coordination is not None:
            yield from _coordination_metrics(self._coordination())


def _single(name: str, kind: str, doc: str, value: float) -> Metric:
    metric = Metric(name, doc, kind)
    metric.samples.append(Sample(name + "_total" if kind == "counter" else name, {}, value))
    return metric


def _request_metrics(st: HealthSnapshot) -> Iterator[Metric]:
    requests = Metric(
        "realtimekit_api_requests",
        "API requests sent, by HTTP status code (or timeout, connect, error).",
        "counter",
    )
    for code, count in sorted(st.requests.items()):
        requests.samples.append(Sample("realtimekit_api_requests_total", {"code": code}, count))
    yield requests
    name = "realtimekit_api_request_duration_seconds"
    hist = Metric(name, "Duration of API requests.", "histogram")
    cumulative = 0
    for bound, count in zip((*DURATION_BUCKETS, float("inf")), st.duration_buckets, strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else repr(bound)
        hist.samples.append(Sample(name + "_bucket", {"le": le}, cumulative))
    hist.samples.append(Sample(name + "_count", {}, cumulative))
    hist.samples.append(Sample(name + "_sum", {}, st.duration_sum))
    yield hist
    yield _single(
        "realtimekit_api_requests_in_flight", "gauge", "API requests in flight now.", st.in_flight
    )
    yield _single(
        "realtimekit_api_budget_requests_per_second",
        "gauge",
        "Requests per second the exporter allows itself (the tokens' budgets, less reserves).",
        st.budget_per_second,
    )
    yield _single(
        "realtimekit_api_rate_limited_until_timestamp_seconds",
        "gauge",
        "Unix time until which the API told us to send nothing (429); 0 when not limited.",
        st.rate_limited_until,
    )


def _poll_metrics(st: HealthSnapshot) -> Iterator[Metric]:
    yield _single(
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
            Sample("realtimekit_polls_skipped_total", {"reason": reason}, st.skipped[reason])
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


#: Per-app discovery families: name, type, HELP, how the value is read (None: no sample).
_APP_FAMILIES: Final[tuple[tuple[str, str, str, Callable[[AppHealth], float | None]], ...]] = (
    ("realtimekit_discovery_up", "gauge", "1 if the app's last discovery cycle succeeded.",
     lambda a: None if a.up is None else float(a.up)),
    ("realtimekit_app_live_sessions", "gauge", "Live sessions of the app, as the API "
     "reported them (all of them, not only the exported ones).",
     lambda a: a.live_sessions if a.up else None),
    ("realtimekit_app_live_participants", "gauge", "Participants in all live sessions "
     "the discovery listing returned.", lambda a: a.live_participants if a.up else None),
    ("realtimekit_discovery_duration_seconds", "gauge", "Duration of the app's last "
     "discovery cycle.", lambda a: None if a.up is None else a.duration),
    ("realtimekit_discovery_pages", "counter", "Pages of sessions read by discovery.",
     lambda a: a.pages),
    ("realtimekit_discovery_confirmations", "counter", "Active-session calls made to "
     "confirm a meeting that was live and is not listed any more.", lambda a: a.confirmations),
    ("realtimekit_discovery_dropped_meetings", "counter", "Listed meetings not exported "
     "because of discover.max_meetings, summed over cycles.", lambda a: a.dropped),
    ("realtimekit_discovery_incomplete", "counter", "Discovery cycles whose listing ended with "
     "fewer sessions than the API's total_count (its unlisted meetings were confirmed one by "
     "one).", lambda a: a.incomplete),
    ("realtimekit_discovery_invalid_sessions", "counter", "Malformed sessions skipped in "
     "discovery listings (their meetings, when known, were asked about one by one).",
     lambda a: a.invalid_sessions),
)  # fmt: skip


def _app_metrics(apps: dict[tuple[str, str], AppHealth]) -> Iterator[Metric]:
    """Per-app discovery numbers."""
    ordered = sorted(apps.items())
    for name, kind, doc, read in _APP_FAMILIES:
        metric = Metric(name, doc, kind)
        for (account_id, app_id), app in ordered:
            value = read(app)
            if value is not None:
                labels = {"account_id": account_id, "app_id": app_id}
                metric.samples.append(
                    Sample(name + "_total" if kind == "counter" else name, labels, value)
                )
        yield metric
    errors = Metric(
        "realtimekit_discovery_errors", "Failed discovery cycles, by reason.", "counter"
    )
    for (account_id, app_id), app in ordered:
        for reason, count in sorted(app.errors.items()):
            labels = {"account_id": account_id, "app_id": app_id, "reason": reason}
            errors.samples.append(Sample("realtimekit_discovery_errors_total", labels, count))
    yield errors


def _webhook_metrics(counts: WebhookCounts) -> Iterator[Metric]:
    """The webhook receiver's numbers, per app."""

    def family(
        name: str, kind: str, doc: str, rows: Mapping[Any, float], extra: str = ""
    ) -> Metric:
        metric = Metric(name, doc, kind)
        sample = name + "_total" if kind == "counter" else name
        for row, value in sorted(rows.items()):
            labels = {"account_id": row[0], "app_id": row[1]}
            if extra:
                labels[extra] = row[2]
            metric.samples.append(Sample(sample, labels, value))
        return metric

    yield family(
        "realtimekit_webhook_requests",
        "counter",
        "Webhook deliveries received, by result (accepted, duplicate, bad_signature, malformed, "
        "unknown_app, too_large).",
        counts.requests,
        "result",
    )
    yield family(
        "realtimekit_webhook_events",
        "counter",
        "Accepted webhook events, by event name.",
        counts.events,
        "event",
    )
    yield family(
        "realtimekit_webhook_last_event_timestamp_seconds",
        "gauge",
        "Unix time of the app's last accepted webhook event.",
        counts.last_event,
    )
    yield family(
        "realtimekit_webhook_refreshes",
        "counter",
        "Prompt polls of a meeting asked for by its webhook events (coalesced).",
        counts.refreshes,
    )


def _coordination_metrics(state: CoordinationState) -> Iterator[Metric]:
    yield _single(
        "realtimekit_exporter_leader",
        "gauge",
        "1 if this replica holds its shard's lease (polls and exports its meetings), 0 on a "
        "standby.",
        1.0 if state.leader else 0.0,
    )
    yield _single(
        "realtimekit_coordination_up",
        "gauge",
        "1 if the last operation on Redis succeeded (shared budget, lease, state mirror).",
        1.0 if state.up else 0.0,
    )
    errors = Metric(
        "realtimekit_coordination_errors", "Failed Redis operations, by operation.", "counter"
    )
    for op, count in sorted(state.errors.items()):
        errors.samples.append(Sample("realtimekit_coordination_errors_total", {"op": op}, count))
    yield errors
