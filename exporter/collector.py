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
from exporter.errors import REASONS
from exporter.model import SESSION_STATUSES, Session
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
