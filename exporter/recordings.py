"""Recordings and livestreams: what the API says of them, kept per app, and their series.

Each app with ``recordings.enabled`` is read with one window listing per cycle
(``GET …/recordings?start_time=<now − window_hours>&sort_by=invokedTime&sort_order=DESC``,
every page), and each app with ``livestreams.enabled`` with one listing of its livestreams; a
``recording.statusUpdate`` or ``livestreaming.statusUpdate`` webhook changes the same books at once
(:meth:`RecordingBook.take_event`, :meth:`LivestreamBook.take_event`). A recording is counted in
``realtimekit_recordings_finished_total`` once, when the exporter first sees it reach ``UPLOADED``
or ``ERRORED`` by either path; those already finished at the first look are only remembered.

Only ids, statuses, times and the meeting id are read: download URLs, file names, storage
settings, stream keys, ingest servers and playback URLs are never parsed, kept, shown or logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

from exporter.client import ApiClient
from exporter.config import App
from exporter.listings import walk
from exporter.model import SAFE_ID, AppKey, MeetingKey, parse_timestamp
from exporter.pulls import Pull
from exporter.store import Labels

log = logging.getLogger(__name__)

RECORDING_STATUSES: Final = ("INVOKED", "RECORDING", "UPLOADING", "UPLOADED", "ERRORED", "PAUSED")
ACTIVE: Final = frozenset({"INVOKED", "RECORDING", "UPLOADING", "PAUSED"})
FINISHED: Final = ("UPLOADED", "ERRORED")
LIVESTREAM_STATUSES: Final = ("LIVE", "IDLE", "ERRORED", "INVOKED")
#: Webhook spellings of livestream states that the contract names otherwise.
LIVESTREAM_ALIASES: Final = {"OFFLINE": "IDLE"}
#: Recordings remembered per app at most (the oldest are forgotten first).
MAX_TRACKED: Final = 200_000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Recording:
    id: str
    meeting_id: str
    status: str
    invoked_at: float
    started_at: float | None = None
    stopped_at: float | None = None
    seen_at: float | None = None  # when the exporter first saw it in this status

    def since(self) -> float | None:
        """When it entered its status, as the contract defines it."""
        if self.status == "INVOKED":
            stamp: float | None = self.invoked_at
        elif self.status in ("RECORDING", "PAUSED"):
            stamp = self.started_at
        else:
            stamp = self.stopped_at
        return stamp if stamp is not None else self.seen_at


@dataclass(frozen=True, slots=True)
class Livestream:
    id: str
    meeting_id: str | None
    status: str
    created_at: float | None = None


def _text(data: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _meeting_id(data: Mapping[str, Any]) -> str | None:
    meeting = data.get("meeting")
    nested = _text(meeting, "id") if isinstance(meeting, dict) else None
    found = nested or _text(data, "meeting_id", "meetingId")
    return found if found is not None and SAFE_ID.fullmatch(found) else None


def _status(data: Mapping[str, Any], known: Iterable[str]) -> str:
    status = data.get("status")
    if not isinstance(status, str):
        raise ValueError("status is missing")
    status = LIVESTREAM_ALIASES.get(status.upper(), status.upper())
    if status not in known:
        raise ValueError(f"unknown status {status[:40]!r}")
    return status


def _id(data: Mapping[str, Any], *keys: str) -> str:
    found = _text(data, *keys)
    if found is None or not SAFE_ID.fullmatch(found):
        raise ValueError(f"{keys[0]} is missing or not a safe id")
    return found


def parse_recording(data: Any, now: float | None = None) -> Recording:
    """A recording of a listing (snake_case) or of a webhook (camelCase). ``now`` stands in for
    a missing ``invoked_time`` (webhooks may omit it). Raises ValueError naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    invoked = parse_timestamp(data.get("invoked_time") or data.get("invokedTime"))
    if invoked is None:
        if now is None:
            raise ValueError("invoked_time is missing or not a timestamp")
        invoked = now
    meeting_id = _meeting_id(data)
    if meeting_id is None:
        raise ValueError("meeting.id is missing or not a safe id")
    return Recording(
        id=_id(data, "id", "recordingId"),
        meeting_id=meeting_id,
        status=_status(data, RECORDING_STATUSES),
        invoked_at=invoked,
        started_at=parse_timestamp(data.get("started_time") or data.get("startedTime")),
        stopped_at=parse_timestamp(data.get("stopped_time") or data.get("stoppedTime")),
    )


def parse_livestream(data: Any) -> Livestream:
    """A livestream of a listing or of a webhook (``streamId``, ``OFFLINE`` meaning ``IDLE``)."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return Livestream(
        id=_id(data, "id", "streamId", "stream_id"),
        meeting_id=_meeting_id(data),
        status=_status(data, LIVESTREAM_STATUSES),
        created_at=parse_timestamp(data.get("created_at") or data.get("createdAt")),
    )


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _log_invalid(what: str, app: AppKey, invalid: list[str]) -> None:
    for message in invalid[:10]:
        log.warning(
            "%s listing of account_id=%s app_id=%s skipped a malformed item (%s)",
            what, *app, message,
        )  # fmt: skip
    if len(invalid) > 10:
        log.warning("… and %d more malformed %s item(s)", len(invalid) - 10, what)


class RecordingBook:
    """One app's recordings invoked within the window: the latest per meeting, counts by status,
    and recordings finished since the exporter first looked. Thread-safe; bounded."""

    def __init__(self, window_seconds: float) -> None:
        self.window = window_seconds
        self._lock = threading.Lock()
        self._recordings: dict[str, Recording] = {}
        self._finished: dict[str, float] = {}  # seen finished (counted or not): invoked_at
        self.finished_total = dict.fromkeys(FINISHED, 0)
        self.invalid = 0  # unreadable items skipped, in listings and events
        self._looked = False  # a complete listing has been taken in

    def take_listing(self, recordings: Iterable[Recording], now: float, complete: bool) -> None:
        """A window listing: what it holds replaces what was known; when it is complete, what it
        no longer holds (aged out of the window, deleted) is forgotten."""
        with self._lock:
            listed = {r.id: self._see(r, now) for r in recordings}
            if complete:
                self._recordings = listed
            else:
                self._recordings.update(listed)
            self._looked = self._looked or complete
            self._forget(now)

    def take_event(self, recording: Recording, now: float) -> None:
        """A ``recording.statusUpdate``: it counts as seen now, in its new status."""
        with self._lock:
            old = self._recordings.get(recording.id)
            if old is not None:  # the event may lack what the listing said
                recording = replace(
                    recording,
                    invoked_at=old.invoked_at,
                    started_at=recording.started_at or old.started_at,
                    stopped_at=recording.stopped_at or old.stopped_at,
                )
            self._recordings[recording.id] = self._see(recording, now, event=True)
            self._forget(now)

    def _see(self, recording: Recording, now: float, *, event: bool = False) -> Recording:
        old = self._recordings.get(recording.id)
        seen = old.seen_at if old is not None and old.status == recording.status else now
        if recording.status in FINISHED and recording.id not in self._finished:
            self._finished[recording.id] = recording.invoked_at
            if self._looked or event or (old is not None and old.status in ACTIVE):
                self.finished_total[recording.status] += 1
        return replace(recording, seen_at=seen)

    def _forget(self, now: float) -> None:
        horizon = now - self.window
        if len(self._finished) > MAX_TRACKED or any(
            t < horizon for t in list(self._finished.values())[:1]
        ):
            kept = sorted(self._finished.items(), key=lambda item: item[1])[-MAX_TRACKED:]
            self._finished = {k: t for k, t in kept if t >= horizon}
        if len(self._recordings) > MAX_TRACKED:
            kept_r = sorted(self._recordings.values(), key=lambda r: r.invoked_at)[-MAX_TRACKED:]
            self._recordings = {r.id: r for r in kept_r}

    def view(self, now: float) -> tuple[dict[str, Recording], dict[str, bool], dict[str, int]]:
        """Per meeting its latest recording within the window and whether it has an active
        one; and the window's recordings by status (every status present)."""
        horizon = now - self.window
        latest: dict[str, Recording] = {}
        active: dict[str, bool] = {}
        counts = dict.fromkeys(RECORDING_STATUSES, 0)
        with self._lock:
            for rec in self._recordings.values():
                if rec.status in ACTIVE:
                    active[rec.meeting_id] = True
                if rec.invoked_at < horizon:
                    continue
                counts[rec.status] += 1
                best = latest.get(rec.meeting_id)
                if best is None or (rec.invoked_at, rec.id) > (best.invoked_at, best.id):
                    latest[rec.meeting_id] = rec
        return latest, active, counts


class LivestreamBook:
    """One app's livestreams: each with its last known status. Thread-safe; bounded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, Livestream] = {}
        self.invalid = 0

    def take_listing(self, streams: Iterable[Livestream], complete: bool) -> None:
        with self._lock:
            listed = {s.id: s for s in streams}
            self._streams = listed if complete else {**self._streams, **listed}
            self._bound()

    def take_event(self, stream: Livestream) -> None:
        with self._lock:
            old = self._streams.get(stream.id)
            if old is not None:
                stream = replace(
                    stream,
                    meeting_id=stream.meeting_id or old.meeting_id,
                    created_at=stream.created_at or old.created_at,
                )
            self._streams[stream.id] = stream
            self._bound()

    def _bound(self) -> None:
        if len(self._streams) > MAX_TRACKED:
            kept = sorted(self._streams.values(), key=lambda s: s.created_at or 0)[-MAX_TRACKED:]
            self._streams = {s.id: s for s in kept}

    def view(self) -> tuple[dict[str, Livestream], dict[str, int]]:
        """Per meeting its latest livestream; the app's livestreams by status."""
        latest: dict[str, Livestream] = {}
        counts = dict.fromkeys(LIVESTREAM_STATUSES, 0)
        with self._lock:
            for stream in self._streams.values():
                counts[stream.status] += 1
                if stream.meeting_id is None:
                    continue
                best = latest.get(stream.meeting_id)
                if best is None or (stream.created_at or 0, stream.id) > (
                    best.created_at or 0,
                    best.id,
                ):
                    latest[stream.meeting_id] = stream
        return latest, counts


def _base(app: AppKey) -> str:
    return f"/accounts/{app[0]}/realtime/kit/{app[1]}"


class RecordingsPull:
    """The recordings pull of one app: one window listing per run."""

    def __init__(self, app: AppKey, book: RecordingBook, clock: Callable[[], float]) -> None:
        self.app, self.book, self._clock = app, book, clock
        self._pages = 1

    def cost(self) -> int:
        return self._pages

    async def run(self, client: ApiClient) -> None:
        now = self._clock()
        params = {
            "start_time": _iso(now - self.book.window),
            "sort_by": "invokedTime",
            "sort_order": "DESC",
        }
        walked = await walk(
            client, f"{_base(self.app)}/recordings", params, parse_recording, key=_rec_id
        )
        self._pages = walked.pages
        self.book.invalid += len(walked.invalid)
        _log_invalid("recordings", self.app, walked.invalid)
        self.book.take_listing(walked.items, now, walked.complete)


class LivestreamsPull:
    """The livestreams pull of one app: one listing per run."""

    def __init__(self, app: AppKey, book: LivestreamBook) -> None:
        self.app, self.book = app, book
        self._pages = 1

    def cost(self) -> int:
        return self._pages

    async def run(self, client: ApiClient) -> None:
        walked = await walk(
            client, f"{_base(self.app)}/livestreams", {}, parse_livestream, key=_stream_id
        )
        self._pages = walked.pages
        self.book.invalid += len(walked.invalid)
        _log_invalid("livestreams", self.app, walked.invalid)
        self.book.take_listing(walked.items, walked.complete)


def _rec_id(recording: Recording) -> str:
    return recording.id


def _stream_id(stream: Livestream) -> str:
    return stream.id


class Media:
    """The recording and livestream books and pulls of every app that has them on; kept across
    reloads for the apps that keep them on."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.recordings: dict[AppKey, RecordingsPull] = {}
        self.livestreams: dict[AppKey, LivestreamsPull] = {}

    def plan(self, apps: Iterable[App]) -> list[tuple[AppKey, str, float, Pull]]:
        """Books and pulls for these apps; returns each pull with its kind and interval."""
        recordings: dict[AppKey, RecordingsPull] = {}
        livestreams: dict[AppKey, LivestreamsPull] = {}
        pulls: list[tuple[AppKey, str, float, Pull]] = []
        for app in apps:
            if app.recordings.enabled:
                window = app.recordings.window_hours * 3600
                old = self.recordings.get(app.key)
                keep = old is not None and old.book.window == window
                recordings[app.key] = (
                    old if keep and old is not None
                    else RecordingsPull(app.key, RecordingBook(window), self._clock)
                )  # fmt: skip
                pulls.append((app.key, "recordings", app.recordings.interval_seconds,
                              recordings[app.key]))  # fmt: skip
            if app.livestreams.enabled:
                livestreams[app.key] = self.livestreams.get(app.key) or LivestreamsPull(
                    app.key, LivestreamBook()
                )
                pulls.append((app.key, "livestreams", app.livestreams.interval_seconds,
                              livestreams[app.key]))  # fmt: skip
        self.recordings, self.livestreams = recordings, livestreams
        return pulls

    def take_event(self, app: AppKey, event: str, payload: Mapping[str, Any]) -> str | None:
        """A signed ``recording.statusUpdate`` or ``livestreaming.statusUpdate``: applied at
        once when the app has that kind on. Returns the meeting id it was about (None: ignored);
        raises ValueError naming what is wrong with the payload."""
        now = self._clock()
        if event == "recording.statusUpdate" and app in self.recordings:
            data = payload.get("recording")
            recording = parse_recording(data if isinstance(data, dict) else payload, now)
            self.recordings[app].book.take_event(recording, now)
            return recording.meeting_id
        if event == "livestreaming.statusUpdate" and app in self.livestreams:
            data = payload.get("livestream")
            merged = {**payload, **data} if isinstance(data, dict) else dict(payload)
            stream = parse_livestream(merged)
            self.livestreams[app].book.take_event(stream)
            return stream.meeting_id
        return None

    def collect(self, exported: Mapping[MeetingKey, Labels]) -> Iterator[Metric]:
        """Every family of recordings and livestreams; per-meeting series for ``exported``
        meetings of apps that have the kind on."""
        now = self._clock()
        by_app: dict[AppKey, list[tuple[MeetingKey, Labels]]] = {}
        for key, labels in sorted(exported.items()):
            by_app.setdefault(key.app, []).append((key, labels))
        yield from _recording_families(self.recordings, by_app, now)
        yield from _livestream_families(self.livestreams, by_app)


def _labels(key: MeetingKey, labels: Labels, **extra: str) -> dict[str, str]:
    out = {"account_id": key.account_id, "app_id": key.app_id, "meeting_id": key.meeting_id}
    out.update(labels)
    out.update(extra)
    return out


def _family(name: str, kind: str, doc: str) -> Metric:
    return Metric(name, doc, kind)


def _recording_families(
    pulls: Mapping[AppKey, RecordingsPull],
    by_app: Mapping[AppKey, list[tuple[MeetingKey, Labels]]],
    now: float,
) -> Iterator[Metric]:
    active = _family("realtimekit_recording_active", "gauge",
                     "1 while the meeting has a recording in INVOKED, RECORDING, UPLOADING or "
                     "PAUSED, else 0.")  # fmt: skip
    status = _family("realtimekit_recording_status", "gauge",
                     "Status of the meeting's latest recording invoked within the window "
                     "(1 for the current status).")  # fmt: skip
    since = _family("realtimekit_recording_state_since_timestamp_seconds", "gauge",
                    "Unix time the meeting's latest recording entered its status.")  # fmt: skip
    app_counts = _family("realtimekit_app_recordings", "gauge",
                         "Recordings invoked within the window, by current status.")  # fmt: skip
    finished = _family("realtimekit_recordings_finished", "counter",
                       "Recordings seen reaching UPLOADED or ERRORED, each once.")  # fmt: skip
    for app, pull in sorted(pulls.items()):
        latest, busy, counts = pull.book.view(now)
        ids = {"account_id": app[0], "app_id": app[1]}
        for name, count in counts.items():
            app_counts.samples.append(Sample(app_counts.name, {**ids, "status": name}, count))
        for name, total in pull.book.finished_total.items():
            by = {**ids, "status": name}
            finished.samples.append(Sample("realtimekit_recordings_finished_total", by, total))
        for key, labels in by_app.get(app, ()):
            on = 1.0 if busy.get(key.meeting_id) else 0.0
            active.samples.append(Sample(active.name, _labels(key, labels), on))
            rec = latest.get(key.meeting_id)
            if rec is None:
                continue
            for name in RECORDING_STATUSES:
                value = 1.0 if name == rec.status else 0.0
                status.samples.append(Sample(status.name, _labels(key, labels, status=name), value))
            stamp = rec.since()
            if stamp is not None:
                since.samples.append(Sample(since.name, _labels(key, labels), stamp))
    yield from (active, status, since, app_counts, finished)


def _livestream_families(
    pulls: Mapping[AppKey, LivestreamsPull],
    by_app: Mapping[AppKey, list[tuple[MeetingKey, Labels]]],
) -> Iterator[Metric]:
    status = _family("realtimekit_livestream_status", "gauge",
                     "Status of the meeting's livestream (1 for the current status).")  # fmt: skip
    app_counts = _family("realtimekit_app_livestreams", "gauge",
                         "The app's livestreams by status.")  # fmt: skip
    for app, pull in sorted(pulls.items()):
        latest, counts = pull.book.view()
        ids = {"account_id": app[0], "app_id": app[1]}
        for name, count in counts.items():
            app_counts.samples.append(Sample(app_counts.name, {**ids, "status": name}, count))
        for key, labels in by_app.get(app, ()):
            stream = latest.get(key.meeting_id)
            if stream is None:
                continue
            for name in LIVESTREAM_STATUSES:
                value = 1.0 if name == stream.status else 0.0
                status.samples.append(Sample(status.name, _labels(key, labels, status=name), value))
    yield from (status, app_counts)
