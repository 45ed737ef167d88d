"""The per-meeting metrics contract, written once, and the per-app aggregates.

:data:`FAMILIES` gives each per-meeting family's name, type, HELP and how its samples are read
from a meeting's state; both renderers of :mod:`exporter.meeting_metrics` walk it. (A new
per-meeting metric is one row here.) :class:`Tally` sums a pass over the meetings into the per-app
aggregates, which stay when ``metrics.per_meeting`` is false:

- ``realtimekit_app_session_participants{account_id,app_id}``: a gauge histogram of the exported
  live sessions by ``live_participants`` (buckets :data:`PARTICIPANT_BUCKETS`);
- ``realtimekit_app_meetings_failing{account_id,app_id}``: exported meetings whose last poll
  failed.

Pure: no I/O, no store, no HTTP.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Final

from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric

from exporter.errors import REASONS
from exporter.exposition import encodable, go_float, header, line, wanted
from exporter.model import SESSION_STATUSES, Answer, MeetingKey, Session
from exporter.store import Labels, MeetingState

AppKey = tuple[str, str]  # (account_id, app_id)

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


def _info_without_name(_: MeetingState, s: Session) -> tuple[tuple[Extra, float], ...]:
    return (((("session_id", s.id), ("type", s.type or "")), 1.0),)


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
#: FAMILIES for an app with ``metrics.display_name: false``: no ``meeting_display_name`` on
#: ``realtimekit_session_info`` (titles are personal data in many organisations).
FAMILIES_WITHOUT_NAME: Final = tuple(
    replace(f, samples=_info_without_name) if f.name == "realtimekit_session_info" else f
    for f in FAMILIES
)


def meeting_labels(key: MeetingKey, labels: Labels, extra: Extra = ()) -> dict[str, str]:
    """A meeting's labels on every series: its ids, its static labels, the family's own (every
    value :func:`~exporter.exposition.encodable`)."""
    out = {"account_id": key.account_id, "app_id": key.app_id, "meeting_id": key.meeting_id}
    out.update(labels)
    out.update((name, encodable(value)) for name, value in extra)
    return out


# -- per-app aggregates ---------------------------------------------------------------------------

#: Upper bounds of the participants histogram's buckets (``le``), then +Inf.
PARTICIPANT_BUCKETS: Final = (1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
_LE: Final = (*(go_float(b) for b in PARTICIPANT_BUCKETS), "+Inf")
PARTICIPANTS: Final = "realtimekit_app_session_participants"
PARTICIPANTS_HELP: Final = (
    "Live sessions of the app's exported meetings, by live participants (a gauge histogram)."
    + POLLED
)
FAILING: Final = "realtimekit_app_meetings_failing"
FAILING_HELP: Final = "Exported meetings of the app whose last poll failed." + POLLED


class Tally:
    """One app's aggregates, summed over a pass: live sessions per participants bucket (not
    cumulative), their participants, and failing meetings."""

    __slots__ = ("buckets", "failing", "participants")

    def __init__(self) -> None:
        self.buckets = [0] * (len(PARTICIPANT_BUCKETS) + 1)
        self.participants = 0.0
        self.failing = 0

    def add(self, state: MeetingState, answer: Answer | None) -> None:
        """Count one meeting: failing if its last poll failed, and its session if it is LIVE
        (``answer`` is its fresh answer)."""
        if answer.__class__ is Session and answer.status == "LIVE":
            live = answer.live_participants
            self.buckets[bisect_left(PARTICIPANT_BUCKETS, live)] += 1  # first: it may raise
            self.participants += live
        if state.up is False:
            self.failing += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, sessions at most le)`` pairs, +Inf last (it counts every live session)."""
        out, total = [], 0
        for le, count in zip(_LE, self.buckets, strict=True):
            total += count
            out.append((le, float(total)))
        return out


def aggregate_metrics(tallies: Iterable[tuple[AppKey, Tally]]) -> list[Metric]:
    """The aggregates as prometheus_client families (the reference of :func:`aggregate_parts`)."""
    labels = ["account_id", "app_id"]
    hist = GaugeHistogramMetricFamily(PARTICIPANTS, PARTICIPANTS_HELP, labels=labels)
    failing = GaugeMetricFamily(FAILING, FAILING_HELP, labels=labels)
    for app, tally in tallies:
        hist.add_metric(list(app), tally.cumulative(), tally.participants)
        failing.add_metric(list(app), tally.failing)
    return [hist, failing]


def aggregate_parts(
    tallies: list[tuple[AppKey, Tally]], openmetrics: bool, names: frozenset[str] | None
) -> list[bytes]:
    """:func:`aggregate_metrics` as prometheus_client writes them (in the text format a gauge
    histogram is a ``histogram`` plus ``_gcount`` and ``_gsum`` gauges), for the families
    ``names`` selects (see :func:`~exporter.exposition.wanted`)."""
    out: list[bytes] = []
    rows = [({"account_id": a, "app_id": b}, t) for (a, b), t in tallies]
    if wanted(names, PARTICIPANTS, (PARTICIPANTS + s for s in ("_bucket", "_gcount", "_gsum"))):
        kind = "gaugehistogram" if openmetrics else "histogram"
        out.append(header(PARTICIPANTS, kind, PARTICIPANTS_HELP, openmetrics))
        buckets, counts, sums = [], [], []
        for labels, tally in rows:
            cumulative = tally.cumulative()
            for le, n in cumulative:
                buckets.append(line(PARTICIPANTS + "_bucket", {**labels, "le": le}, n))
            counts.append(line(PARTICIPANTS + "_gcount", labels, cumulative[-1][1]))
            sums.append(line(PARTICIPANTS + "_gsum", labels, tally.participants))
            if openmetrics:  # each app's buckets, count and sum together
                buckets += (counts.pop(), sums.pop())
        out.append(b"".join(buckets))
        if rows and not openmetrics:  # count and sum as gauges of their own, after the buckets
            out.append(header(PARTICIPANTS + "_gcount", "gauge", PARTICIPANTS_HELP, False))
            out.append(b"".join(counts))
            out.append(header(PARTICIPANTS + "_gsum", "gauge", PARTICIPANTS_HELP, False))
            out.append(b"".join(sums))
    if wanted(names, FAILING, ()):
        out.append(header(FAILING, "gauge", FAILING_HELP, openmetrics))
        out.append(b"".join(line(FAILING, labels, t.failing) for labels, t in rows))
    return out
