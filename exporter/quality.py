"""Call quality: per app histograms of MOS, packet loss, round-trip time and jitter buffer delay,
from the peer reports of peers that left, never a series per peer.

A ``meeting.participantLeft`` webhook of an app with ``quality.enabled`` brings a peer id; the
peer is sampled (``sample_fraction``) and queued for ``delay_seconds``. The ``peer_reports`` pull
fetches one due report per run, ``GET …/sessions/peer-report/{peer_id}?filters=quality_stats``,
and runs at most every ``3600 / max_reports_per_hour`` seconds, stretched further when the
session polls and the other pulls leave less of the budget. The queue holds at most
``max_reports_per_hour`` peers and each peer once: a peer that does not fit, or is not sampled, is
counted ``skipped``; a report not there yet (404) is asked again at most twice, 60 s apart, then
counted ``missing``. The queue lives in memory: a restart loses the peers still waiting.

Only the ``*_cumulative`` blocks of ``quality`` are read; device, browser, IP, ASN, user and peer
ids never reach a metric, a label, a log line or a page.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

from exporter.client import ApiClient
from exporter.config import App, Quality
from exporter.errors import ApiError
from exporter.model import SAFE_ID, AppKey, decode_json, error_for_status
from exporter.model import _error_doc as error_doc
from exporter.pulls import Pull

log = logging.getLogger(__name__)

RESULTS: Final = ("fetched", "missing", "failed", "skipped")
#: A report that is not there yet is asked again this many times, this many seconds apart.
RETRIES: Final = 2
RETRY_SECONDS: Final = 60.0
#: Peers remembered as done, so that a repeated leave is not fetched twice.
MAX_DONE: Final = 10_000
#: (family, HELP, block, field, factor, low, high, buckets): high bounds what is a measurement.
FAMILIES: Final = (
    ("realtimekit_peer_mos", "Mean opinion score of each peer's stream, 1 to 5.",
     "quality_mos", 1.0, 1.0, 5.0, (1, 2, 2.5, 3, 3.5, 4, 4.5, 5)),
    ("realtimekit_peer_packet_loss_ratio", "Packet loss of each peer's stream, as a ratio.",
     "packet_loss", 0.01, 0.0, 100.0, (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)),
    ("realtimekit_peer_rtt_seconds", "Average round-trip time of each peer's stream.",
     "rtt", 0.001, 0.0, 600_000.0, (0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1)),
    ("realtimekit_peer_jitter_buffer_delay_seconds",
     "Average jitter buffer delay of each peer's stream.",
     "jitter_buffer_delay", 0.001, 0.0, 600_000.0, (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)),
)  # fmt: skip
Series = tuple[str, str]  # (media, direction)


def stream_kind(block: str) -> Series | None:
    """``audio_producer_cumulative`` → (audio, send); ``screenshare_video_consumer_cumulative``
    → (screenshare, receive); anything else None."""
    if not block.endswith("_cumulative"):
        return None
    kind = block[: -len("_cumulative")]
    media = "screenshare" if kind.startswith("screenshare") else kind.split("_", 1)[0]
    direction = (
        "send" if kind.endswith("producer") else "receive" if kind.endswith("consumer") else ""
    )
    return (media, direction) if media in ("audio", "video", "screenshare") and direction else None


@dataclass(frozen=True, slots=True)
class Report:
    """What one report adds: per family, (media, direction, value) observations; and how many
    values were unusable (null, mistyped, out of range)."""

    observations: dict[str, list[tuple[Series, float]]]
    invalid: int


_ABSENT: Final = object()


def _avg(block: Any, name: str) -> Any:
    """``block[name].avg``; :data:`_ABSENT` when the report does not carry it (not every stream
    kind has every measure: a producer has no jitter buffer), ``None`` for an explicit null."""
    part = block.get(name, _ABSENT) if isinstance(block, dict) else _ABSENT
    if part is _ABSENT or part is None:
        return part
    return part.get("avg", _ABSENT) if isinstance(part, dict) else part


def parse_report(status: int, content_type: str, body: bytes) -> Report:
    """Read ``data.participant.peer_report.quality``; a value that is null, mistyped or out of
    range is counted and skipped, never a failure of the report (one the stream kind does not
    carry is simply not there)."""
    if status != 200:
        raise error_for_status(status, error_doc(content_type, body))
    doc = decode_json(content_type, body)
    quality: Any = doc
    for step in ("data", "participant", "peer_report", "quality"):
        quality = quality.get(step) if isinstance(quality, dict) else None
    if not isinstance(quality, dict):
        raise ApiError("invalid_response", "field data.participant.peer_report.quality is missing")
    observations: dict[str, list[tuple[Series, float]]] = {f[0]: [] for f in FAMILIES}
    invalid = 0
    for block_name, block in quality.items():
        series = stream_kind(block_name) if isinstance(block_name, str) else None
        if series is None:
            continue
        for name, _, part, factor, low, high, _ in FAMILIES:
            raw = _avg(block, part)
            if raw is _ABSENT:
                continue
            ok = isinstance(raw, int | float) and not isinstance(raw, bool)
            if not ok or not math.isfinite(raw) or not low <= raw <= high:
                invalid += 1
                continue
            observations[name].append((series, float(raw) * factor))
    return Report(observations, invalid)


@dataclass(slots=True)
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; +Inf last
    total: float = 0.0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)
        index = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
        self.counts[index] += 1
        self.total += value


@dataclass(slots=True)
class Waiting:
    peer_id: str
    due: float
    attempts: int = 0


class PeerReports:
    """One app's queue of peers to ask about, its histograms and its counts. Thread-safe."""

    def __init__(
        self, app: AppKey, rules: Quality, clock: Callable[[], float], rng: Callable[[], float]
    ) -> None:
        self.app, self.rules, self._clock, self._rng = app, rules, clock, rng
        self._lock = threading.Lock()
        self._queue: OrderedDict[str, Waiting] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()
        self.results = dict.fromkeys(RESULTS, 0)
        self.invalid_values = 0
        self.histograms: dict[tuple[str, Series], Histogram] = {}

    def cost(self) -> int:
        return 1

    def left(self, peer_id: str) -> None:
        """A peer left: sample it and queue it (or count it skipped)."""
        if not SAFE_ID.fullmatch(peer_id):
            return
        with self._lock:
            if peer_id in self._queue or peer_id in self._done:
                return
            if (
                self._rng() >= self.rules.sample_fraction
                or len(self._queue) >= self.rules.max_reports_per_hour
            ):
                self.results["skipped"] += 1
                return
            self._queue[peer_id] = Waiting(peer_id, self._clock() + self.rules.delay_seconds)

    def _next_due(self) -> Waiting | None:
        now = self._clock()
        with self._lock:
            due = [w for w in self._queue.values() if w.due <= now]
            if not due:
                return None
            first = min(due, key=lambda w: w.due)
            del self._queue[first.peer_id]
            return first

    async def run(self, client: ApiClient) -> None:
        """Fetch the report of the peer due first, if any (one request at most)."""
        waiting = self._next_due()
        if waiting is None:
            return
        app = f"/accounts/{self.app[0]}/realtime/kit/{self.app[1]}"
        path = f"{app}/sessions/peer-report/{waiting.peer_id}"
        try:
            raw = await client.get(path, {"filters": "quality_stats"})
            report = parse_report(raw.status, raw.content_type, raw.body)
        except ApiError as err:
            self._failed(waiting, err)
            if err.reason != "not_found":
                raise
            return
        self._fetched(waiting.peer_id, report)

    def _failed(self, waiting: Waiting, err: ApiError) -> None:
        with self._lock:
            if err.reason == "not_found" and waiting.attempts < RETRIES:
                waiting.attempts += 1
                waiting.due = self._clock() + RETRY_SECONDS
                self._queue[waiting.peer_id] = waiting
                return
            self.results["missing" if err.reason == "not_found" else "failed"] += 1
            self._remember(waiting.peer_id)

    def _fetched(self, peer_id: str, report: Report) -> None:
        with self._lock:
            self.results["fetched"] += 1
            self.invalid_values += report.invalid
            for name, _, _, _, _, _, buckets in FAMILIES:
                for series, value in report.observations[name]:
                    self.histograms.setdefault((name, series), Histogram(buckets)).observe(value)
            self._remember(peer_id)

    def _remember(self, peer_id: str) -> None:
        self._done[peer_id] = None
        while len(self._done) > MAX_DONE:
            self._done.popitem(last=False)

    def pending(self) -> int:
        return len(self._queue)

    def snapshot(self) -> tuple[dict[tuple[str, Series], Histogram], dict[str, int], int]:
        """Copies of the histograms, the results and the invalid values, for a scrape."""
        with self._lock:
            histograms = {
                k: Histogram(h.buckets, list(h.counts), h.total) for k, h in self.histograms.items()
            }
            return histograms, dict(self.results), self.invalid_values


class CallQuality:
    """The peer report queues of every app with ``quality.enabled``; kept across reloads (with
    their histograms) for apps whose quality settings did not change."""

    def __init__(
        self, clock: Callable[[], float], rng: Callable[[], float] = random.random
    ) -> None:
        self._clock, self._rng = clock, rng
        self.apps: dict[AppKey, PeerReports] = {}

    def plan(self, apps: Iterable[App]) -> list[tuple[AppKey, str, float, Pull]]:
        kept: dict[AppKey, PeerReports] = {}
        pulls: list[tuple[AppKey, str, float, Pull]] = []
        for app in apps:
            if not app.quality.enabled:
                continue
            old = self.apps.get(app.key)
            same = old is not None and old.rules == app.quality
            reports = old if same and old is not None else PeerReports(
                app.key, app.quality, self._clock, self._rng
            )  # fmt: skip
            kept[app.key] = reports
            pulls.append(
                (app.key, "peer_reports", 3600 / app.quality.max_reports_per_hour, reports)
            )
        self.apps = kept
        return pulls

    def take_event(self, app: AppKey, event: str, payload: Mapping[str, Any]) -> bool:
        """A signed ``meeting.participantLeft``: its peer is sampled. True when it was taken."""
        reports = self.apps.get(app)
        participant = payload.get("participant")
        peer = participant.get("peerId") if isinstance(participant, dict) else None
        if event != "meeting.participantLeft" or reports is None or not isinstance(peer, str):
            return False
        reports.left(peer)
        return True

    def collect(self) -> Iterator[Metric]:
        snapshots = [(app, reports.snapshot()) for app, reports in sorted(self.apps.items())]
        for name, doc, *_ in FAMILIES:
            metric = Metric(name, doc, "histogram")
            for (account_id, app_id), (histograms, _, _) in snapshots:
                found = sorted((s, h) for (n, s), h in histograms.items() if n == name)
                for (media, direction), histogram in found:
                    labels = {"account_id": account_id, "app_id": app_id, "media": media,
                              "direction": direction}  # fmt: skip
                    _histogram_samples(metric, labels, histogram)
            yield metric
        results = Metric("realtimekit_peer_reports", "Peer reports, by result.", "counter")
        invalid = Metric(
            "realtimekit_peer_report_invalid_values",
            "Values of fetched peer reports that were null, mistyped or out of range (skipped).",
            "counter",
        )
        for (account_id, app_id), (_, counts, bad) in snapshots:
            ids = {"account_id": account_id, "app_id": app_id}
            for result, count in counts.items():
                results.samples.append(
                    Sample("realtimekit_peer_reports_total", {**ids, "result": result}, count)
                )
            invalid.samples.append(Sample("realtimekit_peer_report_invalid_values_total", ids, bad))
        yield from (results, invalid)


def _histogram_samples(metric: Metric, labels: dict[str, str], histogram: Histogram) -> None:
    running = 0
    bounds = [*(repr(float(b)) for b in histogram.buckets), "+Inf"]
    for bound, count in zip(bounds, histogram.counts, strict=True):
        running += count
        metric.samples.append(Sample(metric.name + "_bucket", {**labels, "le": bound}, running))
    metric.samples.append(Sample(metric.name + "_count", labels, running))
    metric.samples.append(Sample(metric.name + "_sum", labels, histogram.total))
