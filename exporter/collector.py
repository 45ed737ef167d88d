"""Turn the store into Prometheus metric families, fresh on every scrape.

``collect()`` reads one snapshot of the store and never does I/O, so a scrape is fast and cannot
hang on the API; a meeting that left the store is simply not in the next scrape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from exporter import __version__
from exporter.client import DURATION_BUCKETS
from exporter.errors import REASONS
from exporter.model import SESSION_STATUSES, Session
from exporter.poller import PollerStats
from exporter.store import Store


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

    def collect(self) -> Iterator[Metric]:
        _, states = self._store.snapshot()
        now = self._clock()
        stale_after = self._stale_after()
        every = f" Polled every {self._interval():g} seconds."

        def family(name: str, kind: str, doc: str) -> Metric:
            return Metric(name, doc + every, kind)

        up = family(
            "realtimekit_up", "gauge", "1 if the last poll of the meeting got a valid answer."
        )
        last_ok = family(
            "realtimekit_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last valid answer for the meeting.",
        )
        duration = family(
            "realtimekit_poll_duration_seconds",
            "gauge",
            "Duration of the last poll of the meeting.",
        )
        errors = family(
            "realtimekit_poll_errors", "counter", "Failed polls of the meeting, by reason."
        )
        active = family(
            "realtimekit_session_active",
            "gauge",
            "1 if the meeting has an active session, 0 if the API says it has none.",
        )
        live = family(
            "realtimekit_session_live_participants",
            "gauge",
            "Participants in the meeting's session now (0 when there is no active session).",
        )
        peak = family(
            "realtimekit_session_max_concurrent_participants",
            "gauge",
            "Most participants at once in the meeting's current session.",
        )
        consumed = family(
            "realtimekit_session_consumed_seconds",
            "gauge",
            "Participant time consumed by the meeting's current session, in seconds.",
        )
        status = family(
            "realtimekit_session_status", "gauge", "Status of the meeting's current session."
        )
        info = family(
            "realtimekit_session_info", "gauge", "Facts about the meeting's current session."
        )
        started = family(
            "realtimekit_session_start_timestamp_seconds",
            "gauge",
            "Unix time the meeting's current session started.",
        )

        for key, state in states.items():
            labels = {"account_id": key.account_id, "app_id": key.app_id}
            labels["meeting_id"] = key.meeting_id
            labels.update(state.labels)
            if state.up is not None:
                up.samples.append(Sample("realtimekit_up", labels, 1.0 if state.up else 0.0))
            if state.poll_duration is not None:
                duration.samples.append(
                    Sample("realtimekit_poll_duration_seconds", labels, state.poll_duration)
                )
            if state.last_success is not None:
                last_ok.samples.append(
                    Sample("realtimekit_last_success_timestamp_seconds", labels, state.last_success)
                )
            for reason, count in zip(REASONS, state.errors, strict=True):
                if count:
                    errors.samples.append(
                        Sample("realtimekit_poll_errors_total", {**labels, "reason": reason}, count)
                    )
            answer = state.fresh_answer(now, stale_after)
            if answer is None:
                continue
            if not isinstance(answer, Session):
                active.samples.append(Sample("realtimekit_session_active", labels, 0.0))
                live.samples.append(Sample("realtimekit_session_live_participants", labels, 0.0))
                continue
            s = answer
            active.samples.append(Sample("realtimekit_session_active", labels, 1.0))
            live.samples.append(
                Sample("realtimekit_session_live_participants", labels, s.live_participants)
            )
            if s.max_concurrent_participants is not None:
                peak.samples.append(
                    Sample(
                        "realtimekit_session_max_concurrent_participants",
                        labels,
                        s.max_concurrent_participants,
                    )
                )
            if s.minutes_consumed is not None:
                consumed.samples.append(
                    Sample("realtimekit_session_consumed_seconds", labels, s.minutes_consumed * 60)
                )
            for value in SESSION_STATUSES:
                status.samples.append(
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
            info.samples.append(Sample("realtimekit_session_info", info_labels, 1.0))
            if s.started_at is not None:
                started.samples.append(
                    Sample("realtimekit_session_start_timestamp_seconds", labels, s.started_at)
                )

        yield from (up, last_ok, duration, errors, active, live, peak, consumed, status, info)
        yield started
        build = Metric(
            "realtimekit_exporter_build_info", "Version of the exporter; always 1.", "gauge"
        )
        build.samples.append(
            Sample("realtimekit_exporter_build_info", {"version": __version__}, 1.0)
        )
        yield build


class ExporterCollector(Collector):
    """The exporter's own health: API requests, budget, rate limiting, skipped polls."""

    def __init__(self, stats: Callable[[], PollerStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self._stats()

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
