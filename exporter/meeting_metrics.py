"""The per-meeting series and the per-app aggregates of every meeting in the store, rendered
once per scrape from :data:`~exporter.families.FAMILIES`. Nothing here does I/O or knows HTTP.

Two renderers read the table:

- :meth:`MeetingCollector.collect` builds prometheus_client families (the reference);
- :meth:`MeetingCollector.render_parts` writes the same bytes from per-meeting fragments cached
  on the (immutable) :class:`~exporter.store.MeetingState` they were made from, so that a scrape
  of 10,000 meetings is a join of cached bytes (BENCHMARKS.md). Tests check it against
  prometheus_client's rendering of ``collect()`` byte for byte.

Both make one pass over the store that also sums the per-app aggregates
(:class:`~exporter.families.Tally`), and both honour each app's ``metrics`` options: with
``per_meeting: false`` its meetings only feed the aggregates; with ``display_name: false`` its
``realtimekit_session_info`` has no ``meeting_display_name``. One meeting whose series cannot be
rendered (a bug) is left out of the scrape, logged and counted; the others are exported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from operator import itemgetter
from typing import Final

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from exporter import __version__
from exporter.bodies import Bodies, Row
from exporter.config import MetricsOptions
from exporter.exposition import header, line, wanted
from exporter.families import (
    BUILD_INFO,
    FAMILIES,
    FAMILIES_WITHOUT_NAME,
    POLLED,
    RENDER_ERRORS,
    AppKey,
    Family,
    Tally,
    aggregate_metrics,
    aggregate_parts,
    meeting_labels,
)
from exporter.model import Answer, MeetingKey, Session
from exporter.store import MeetingState, Store

log = logging.getLogger(__name__)

Options = Mapping[AppKey, MetricsOptions]
Families = tuple[Family, ...]
_DEFAULT: Final = MetricsOptions()


class MeetingCollector(Collector):
    """Exports :data:`FAMILIES` for every meeting in the store, the per-app aggregates, the
    build info and the render errors. ``options`` gives each app's ``metrics`` options (apps
    it does not name get the defaults; every app it names gets aggregates, zero when it has no
    meeting here)."""

    def __init__(
        self,
        store: Store,
        *,
        stale_after_seconds: Callable[[], float],
        options: Callable[[], Options] = dict,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._stale_after = stale_after_seconds
        self._options = options
        self._clock = clock
        self._render_lock = threading.Lock()  # concurrent scrapes take turns with the bodies
        self._bodies = Bodies()
        self._tallies: list[tuple[AppKey, Tally]] = []  # the last render's aggregates
        #: What the last render was made from (store version, options), when, and until when it
        #: holds (the first time one of its fresh answers turns stale).
        self._made_from: tuple[int, dict[AppKey, MetricsOptions]] | None = None
        self._made_at = self._valid_until = 0.0
        self._render_errors = 0  # meetings left out of a scrape, summed over scrapes
        self._broken: set[MeetingKey] = set()  # meetings left out of the last scrape

    def collect(self) -> Iterator[Metric]:
        _, states = self._store.snapshot()
        now, stale_after, options = self._clock(), self._stale_after(), dict(self._options())
        families = [Metric(f.name, f.help + POLLED, f.kind) for f in FAMILIES]
        tallies = _Tallies(options)
        broken: list[tuple[MeetingKey, Exception]] = []
        for key, state in states.items():
            answer = state.fresh_answer(now, stale_after)
            tally, wanted_options = tallies.of(key)
            table = FAMILIES if wanted_options.display_name else FAMILIES_WITHOUT_NAME
            try:
                tally.add(state, answer)
                if not wanted_options.per_meeting:
                    continue
                rows = _samples(key, state, answer, table)
            except Exception as err:  # a bug in one meeting must not fail the scrape
                broken.append((key, err))
                continue
            for index, sample in rows:
                families[index].samples.append(sample)
        self._left_out(broken)
        yield from families
        yield from aggregate_metrics(tallies.ordered())
        build = Metric(BUILD_INFO.name, BUILD_INFO.help, BUILD_INFO.kind)
        build.samples.append(Sample(BUILD_INFO.name, {"version": __version__}, 1.0))
        yield build
        errors = Metric(RENDER_ERRORS.name, RENDER_ERRORS.help, RENDER_ERRORS.kind)
        errors.samples.append(Sample(RENDER_ERRORS.sample_name, {}, self._render_errors))
        yield errors

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
        time), and the parts are never copied into one. When the store has not changed and no
        answer turned stale since the last render, that render is served again as it is."""
        with self._render_lock:
            blocks, tallies = self._refresh()
        out: list[bytes] = []
        for family, block in zip(FAMILIES, blocks, strict=True):
            if wanted(names, family.name, (family.sample_name,)):
                out.append(header(family.name, family.kind, family.help + POLLED, openmetrics))
                out.append(block)
        out += aggregate_parts(tallies, openmetrics, names)
        if wanted(names, BUILD_INFO.name, ()):
            out.append(header(BUILD_INFO.name, BUILD_INFO.kind, BUILD_INFO.help, openmetrics))
            out.append(line(BUILD_INFO.name, {"version": __version__}, 1.0))
        if wanted(names, RENDER_ERRORS.name, (RENDER_ERRORS.sample_name,)):
            errors = RENDER_ERRORS
            out.append(header(errors.name, errors.kind, errors.help, openmetrics))
            out.append(line(errors.sample_name, {}, self._render_errors))
        return out

    def _refresh(self) -> tuple[list[bytes], list[tuple[AppKey, Tally]]]:
        """Bring the family bodies and aggregates up to date (under the lock)."""
        now, stale_after, options = self._clock(), self._stale_after(), dict(self._options())
        if (self._store.version, options) == self._made_from and (
            self._made_at <= now < self._valid_until
        ):
            return self._bodies.blocks, self._tallies
        version, states = self._store.snapshot()
        made_from = (version, options)
        rows: list[Row] = []
        broken: list[tuple[MeetingKey, Exception]] = []
        tallies = _Tallies(options)
        oldest = now  # the oldest fresh answer: the render holds until it turns stale
        for key, state in states.items():
            answer = state.fresh_answer(now, stale_after)
            if answer is not None and state.last_success is not None:
                oldest = min(oldest, state.last_success)
            tally, wanted_options = tallies.of(key)
            try:
                tally.add(state, answer)
            except Exception as err:  # a bug in one meeting must not fail the scrape
                broken.append((key, err))
                continue
            if wanted_options.per_meeting:
                table = FAMILIES if wanted_options.display_name else FAMILIES_WITHOUT_NAME
                rows.append((key, state, answer, table))
        broken += self._bodies.update(rows)
        self._left_out(broken)
        self._tallies = tallies.ordered()
        # A meeting left out is tried again at the next scrape.
        self._made_from = None if broken else made_from
        self._made_at, self._valid_until = now, oldest + stale_after
        return self._bodies.blocks, self._tallies

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


class _Tallies:
    """The aggregates of one pass, per app: every app of the options, and any other app a
    meeting of the store belongs to. Meetings of one app are mostly adjacent in the store, so
    the last app is remembered."""

    __slots__ = ("_last", "_options", "_tallies")

    def __init__(self, options: Options) -> None:
        self._options = options
        self._tallies = {app: Tally() for app in options}
        self._last: tuple[str, str, Tally, MetricsOptions] = ("", "", Tally(), _DEFAULT)

    def of(self, key: MeetingKey) -> tuple[Tally, MetricsOptions]:
        """The tally of the meeting's app, and the app's options."""
        account_id, app_id, tally, options = self._last
        if key.app_id != app_id or key.account_id != account_id:
            app = key.app
            tally = self._tallies.get(app) or self._tallies.setdefault(app, Tally())
            options = self._options.get(app, _DEFAULT)
            self._last = (key.account_id, key.app_id, tally, options)
        return tally, options

    def ordered(self) -> list[tuple[AppKey, Tally]]:
        return sorted(self._tallies.items(), key=itemgetter(0))


def _samples(
    key: MeetingKey, state: MeetingState, answer: Answer | None, table: Families
) -> list[tuple[int, Sample]]:
    """A meeting's samples as ``collect()`` gives them: (index in the table, sample) pairs."""
    labels = meeting_labels(key, state.labels)
    session = isinstance(answer, Session)
    out = []
    for index, family in enumerate(table):
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
