"""What the status page says of one meeting's recordings and livestream (its ``Recording`` and
``Livestream`` columns), read from the app-level books of :mod:`exporter.recordings`.

A :class:`MediaView` is made once per page. It reads an app's book at most once, and only when a
row of that app asks; each row then looks its meeting up by key, so a page of 100 rows costs one
pass over each shown app's recordings, never one per row. A cell says one of:

- the meeting's state: for recordings the status of its latest recording invoked within the
  window (as ``realtimekit_recording_status``) and how long ago it entered it; for livestreams
  the status of its latest livestream (``OFFLINE`` is ``IDLE``, as in the metrics);
- ``none``: the app is watched and nothing is known of this meeting;
- ``not pulled yet``: the app is watched but its pull has not answered yet, and no webhook told;
- ``off``: the app does not watch that kind (``recordings`` / ``livestreams`` not enabled).

Only statuses and times are given out: never a recording's or livestream's id (neither is a
label of any metric), nor anything private (the books do not hold it in the first place).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from exporter.model import AppKey, MeetingKey
from exporter.pulls import PullKey, PullState
from exporter.recordings import LivestreamBook, Media, Recording, RecordingBook


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell as plain text (the page escapes it): a word and an optional detail line."""

    text: str
    detail: str = ""


OFF: Final = Cell("off", "not watched")


def ago(now: float, then: float) -> str:
    """``12 s ago``, ``5 min ago``, ``3 h ago``, ``2 d ago``: how long ago, to one unit."""
    seconds = max(0.0, now - then)
    for unit, size, up_to in (("s", 1, 120), ("min", 60, 7200), ("h", 3600, 172800)):
        if seconds < up_to:
            return f"{seconds // size:.0f} {unit} ago"
    return f"{seconds // 86400:.0f} d ago"


class MediaView:
    """The recording and livestream cells of the meetings of one page."""

    def __init__(
        self,
        recordings: Mapping[AppKey, RecordingBook],
        livestreams: Mapping[AppKey, LivestreamBook],
        pulls: Mapping[PullKey, PullState],
        now: float,
    ) -> None:
        self._recordings, self._livestreams = recordings, livestreams
        self._pulls, self._now = pulls, now
        self._latest_recordings: dict[AppKey, Mapping[str, Recording]] = {}
        self._latest_streams: dict[AppKey, Mapping[str, str]] = {}  # meeting id: status

    @classmethod
    def of(cls, media: Media, pulls: Mapping[PullKey, PullState], now: float) -> MediaView:
        """The view of the books an :class:`~exporter.appwatch.AppWatch` keeps now."""
        recordings = {app: pull.book for app, pull in media.recordings.items()}
        livestreams = {app: pull.book for app, pull in media.livestreams.items()}
        return cls(recordings, livestreams, pulls, now)

    def recording(self, key: MeetingKey) -> Cell:
        book = self._recordings.get(key.app)
        if book is None:
            return OFF
        if key.app not in self._latest_recordings:  # one pass per app and page
            self._latest_recordings[key.app] = book.view(self._now)[0]
        found = self._latest_recordings[key.app].get(key.meeting_id)
        if found is None:
            return self._nothing(key.app, "recordings")
        since = found.since()
        detail = "" if since is None else f"since {ago(self._now, since)}"
        return Cell(found.status, self._with_pull(key.app, "recordings", detail))

    def livestream(self, key: MeetingKey) -> Cell:
        book = self._livestreams.get(key.app)
        if book is None:
            return OFF
        if key.app not in self._latest_streams:
            latest = book.view()[0]
            self._latest_streams[key.app] = {m: s.status for m, s in latest.items()}
        status = self._latest_streams[key.app].get(key.meeting_id)
        if status is None:
            return self._nothing(key.app, "livestreams")
        return Cell(status, self._with_pull(key.app, "livestreams", ""))

    def _nothing(self, app: AppKey, kind: str) -> Cell:
        pull = self._pulls.get((app, kind))
        if pull is None or pull.up is None:
            return Cell("not pulled yet")
        return Cell("none", self._with_pull(app, kind, ""))

    def _with_pull(self, app: AppKey, kind: str, detail: str) -> str:
        """``detail``, and that the last pull failed when it did (what is shown may be old)."""
        pull = self._pulls.get((app, kind))
        failed = "last pull failed" if pull is not None and pull.up is False else ""
        return "; ".join(part for part in (detail, failed) if part)
