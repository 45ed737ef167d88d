"""The metrics contract: what every meeting's state and the exporter's health look like as
Prometheus families. Nothing here does I/O or knows HTTP; it reads the store and the health
snapshot, once per scrape.

- :data:`~exporter.families.FAMILIES` (:mod:`exporter.families`) is the per-meeting contract,
  written once, with the per-app aggregates;
- :class:`~exporter.meeting_metrics.MeetingCollector` exports them for every meeting in the
  store (two renderers: prometheus_client's families, and cached fragments for scrapes);
- :class:`ExporterCollector` exports the exporter's own health (:mod:`exporter.health`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from exporter.health import DURATION_BUCKETS, AppHealth, CoordinationState, HealthSnapshot
from exporter.meeting_metrics import MeetingCollector

if TYPE_CHECKING:
    from exporter.webhooks import WebhookCounts

__all__ = ["ExporterCollector", "MeetingCollector"]


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
    yield _single(
        "realtimekit_coordination_lease_conflict",
        "gauge",
        "1 if another deployment (a config watching other apps) holds this shard's lease under "
        "the same key_prefix, so this replica stands by; else 0.",
        1.0 if state.conflict else 0.0,
    )
    errors = Metric(
        "realtimekit_coordination_errors", "Failed Redis operations, by operation.", "counter"
    )
    for op, count in sorted(state.errors.items()):
        errors.samples.append(Sample("realtimekit_coordination_errors_total", {"op": op}, count))
    yield errors
