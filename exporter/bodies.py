"""The bodies of the per-meeting families, kept from scrape to scrape and brought up to date
cheaply: the fast renderer behind :meth:`~exporter.meeting_metrics.MeetingCollector.render_parts`.

Each family's body is one ``bytes`` (what a scrape sends, and what :class:`~exporter.exposition.
PartsGzip` remembers compressed). Nothing else holds the lines: per meeting only where its lines
are in each body (end offsets, in ``array``\\ s), the state they were made from, and what each
family's lines depend on (its value, or for a labelled family its key). A new body is written
from slices of the old one (adjacent slices taken as one) and the lines that changed, rendered
again only when what they depend on changed: most polls change the time of the last answer, the
poll duration and the consumed time, and nothing else. A family none of whose lines changed keeps
its body object (so its compressed form is reused too). New lines are copied into the body being
written as they are made and let go at once: a render never holds many small objects (issue 26:
holding the ~120,000 new lines of a full render until one join left ~20 MB of the allocator's
pools with the process).

At 10,000 meetings this holds about 25 MB (the bodies, ~2 KB per meeting) where keeping every
meeting's lines as well held ~80 MB (BENCHMARKS.md, issue 26).
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Sequence
from itertools import accumulate
from typing import Any, Final

from exporter.exposition import go_float, label_text, line
from exporter.families import FAMILIES, Family, meeting_labels
from exporter.model import Answer, MeetingKey, Session
from exporter.store import Labels, MeetingState

Families = tuple[Family, ...]
Row = tuple[MeetingKey, MeetingState, "Answer | None", Families]  # a meeting to render
_COUNT: Final = len(FAMILIES)
_SESSION_ONLY: Final = tuple(f.session_only for f in FAMILIES)


class _Meeting:
    """What the bodies hold for one meeting: its place, the state and answer its lines were made
    from, what each family's lines depend on, and its escaped label text."""

    __slots__ = ("answer", "base", "depends", "labels", "slot", "state", "table")

    def __init__(self, key: MeetingKey, labels: Labels, table: Families) -> None:
        self.labels = labels
        self.table = table
        self.base = "{" + label_text(meeting_labels(key, labels)) + "} "
        self.slot = -1
        self.state: MeetingState | None = None
        self.answer: Answer | None = None
        self.depends: tuple[Hashable, ...] = ()


def _depends(state: MeetingState, answer: Answer | None) -> tuple[Hashable, ...]:
    """Per family, what its lines depend on (``None``: no line)."""
    session = isinstance(answer, Session)
    out: list[Hashable] = []
    for family, only in zip(FAMILIES, _SESSION_ONLY, strict=True):
        if only and not session:
            out.append(None)
        elif family.value is not None:
            out.append(family.value(state, answer))
        else:
            assert family.key is not None
            out.append(family.key(state, answer))
    return tuple(out)


def _lines(key: MeetingKey, m: _Meeting, index: int, state: MeetingState, answer: Any) -> bytes:
    """One family's lines of a meeting, exactly as prometheus_client writes them."""
    family = m.table[index]
    if family.session_only and not isinstance(answer, Session):
        return b""
    if family.value is not None:
        value = family.value(state, answer)
        return b"" if value is None else f"{family.sample_name}{m.base}{go_float(value)}\n".encode()
    assert family.samples is not None
    return b"".join(
        line(family.sample_name, meeting_labels(key, m.labels, extra), value)
        for extra, value in family.samples(state, answer)
    )


class Bodies:
    """The per-meeting families' bodies of the last render (see the module's docstring)."""

    def __init__(self) -> None:
        self.blocks: list[bytes] = [b""] * _COUNT
        self._lengths = [array("q") for _ in range(_COUNT)]  # per family, each slot's bytes
        self._meetings: dict[MeetingKey, _Meeting] = {}
        self._keys: list[MeetingKey] = []  # the last render's meetings, in order

    def update(self, rows: Sequence[Row]) -> list[tuple[MeetingKey, Exception]]:
        """Bring the bodies up to date with ``rows`` (every exported meeting, in output order);
        a meeting whose lines cannot be rendered (a bug) is left out and returned."""
        join = _Join(self.blocks, self._lengths, moved=[row[0] for row in rows] != self._keys)
        meetings: dict[MeetingKey, _Meeting] = {}
        broken: list[tuple[MeetingKey, Exception]] = []
        kept: list[MeetingKey] = []
        for key, state, answer, table in rows:
            m = self._meetings.get(key)
            try:
                placed = _place(key, m, state, answer, table)
            except Exception as err:  # a bug in one meeting must not fail the scrape
                broken.append((key, err))
                continue
            if placed is None:
                assert m is not None
                join.keep(m.slot)
            else:
                join.add(m.slot if m is not None else -1, placed[1])
                m = placed[0]
            m.slot = len(kept)
            meetings[key] = m
            kept.append(key)
        self.blocks, self._lengths = join.finish(everything=bool(broken))
        self._meetings, self._keys = meetings, kept
        return broken


def _place(
    key: MeetingKey, m: _Meeting | None, state: MeetingState, answer: Answer | None, table: Families
) -> tuple[_Meeting, list[bytes | None]] | None:
    """``None`` when the meeting's lines are those of the last render; else its record and,
    per family, its new lines (``None``: the same as in the last render)."""
    if m is not None and m.state is state and m.answer is answer and m.table is table:
        return None
    depends = _depends(state, answer)
    if m is None or m.labels != state.labels or m.table is not table:
        record = _Meeting(key, state.labels, table)
        lines: list[bytes | None] = [_lines(key, record, i, state, answer) for i in range(_COUNT)]
    else:
        record = m
        lines = [
            None if depends[i] == m.depends[i] else _lines(key, m, i, state, answer)
            for i in range(_COUNT)
        ]
    record.state, record.answer, record.depends = state, answer, depends
    return record, lines


class _Join:
    """New bodies written as the meetings go by, one ``bytearray`` per family: the old body's
    slices (adjacent ones taken as one) and the new lines, each copied at once (the module's
    docstring says why), then copied once into ``bytes``. A family is written only once one of
    its lines changed (until then, what it has taken is all of the old body so far); meetings
    whose lines did not change are taken a run at a time."""

    def __init__(self, blocks: list[bytes], lengths: list[array[int]], moved: bool) -> None:
        self._blocks = blocks
        self._views = [memoryview(block) for block in blocks]
        self._old = lengths
        self._starts = [array("q", accumulate(each, initial=0)) for each in lengths]
        self._out = [bytearray() for _ in range(_COUNT)]
        self._lengths = [array("q") for _ in range(_COUNT)]
        self._changed = [moved] * _COUNT
        self._slices = [[0, 0] for _ in range(_COUNT)]  # per family, the old slice growing
        self._run = [0, 0]  # old slots [a, b) of unchanged meetings not taken yet

    def keep(self, slot: int) -> None:
        """The meeting at ``slot`` in the old bodies comes next, unchanged."""
        run = self._run
        if run[0] == run[1] or run[1] != slot:
            self._take()
            run[0] = slot
        run[1] = slot + 1

    def add(self, slot: int, lines: list[bytes | None]) -> None:
        """A meeting comes next with these new lines (``None``: its old ones, at ``slot``)."""
        self._take()
        starts, lengths, changed = self._starts, self._lengths, self._changed
        for i, new in enumerate(lines):
            growing = self._slices[i]
            if new is None:
                start, end = starts[i][slot], starts[i][slot + 1]
                lengths[i].append(end - start)
                if growing[1] == start:
                    growing[1] = end
                    continue
                changed[i] = True  # old lines were left out before these
            else:
                changed[i] = True
                lengths[i].append(len(new))
                start = end = -1
            if growing[1] > growing[0]:
                self._write(i)
            if new is None:
                growing[0], growing[1] = start, end
            else:
                growing[0] = growing[1] = -1  # (a new line: no old slice grows from here)
                self._out[i] += new

    def _take(self) -> None:
        """Take the pending run of unchanged meetings: their old slice of every family."""
        a, b = self._run
        if b <= a:
            return
        self._run[0] = self._run[1] = 0
        for i, starts in enumerate(self._starts):
            start, end = starts[a], starts[b]
            self._lengths[i].extend(self._old[i][a:b])
            growing = self._slices[i]
            if growing[1] == start:
                growing[1] = end
                continue
            self._changed[i] = True  # old lines were left out before these
            self._write(i)
            growing[0], growing[1] = start, end

    def _write(self, i: int) -> None:
        """Write out the old slice growing in family ``i``."""
        start, end = self._slices[i]
        if end > start:
            self._out[i] += self._views[i][start:end]

    def finish(self, everything: bool) -> tuple[list[bytes], list[array[int]]]:
        """The bodies (a family whose lines all stayed keeps its old body object) and lengths."""
        self._take()
        blocks = []
        for i, old in enumerate(self._blocks):
            if not (self._changed[i] or everything):
                blocks.append(old)  # all of the old body, in one slice
                continue
            self._write(i)
            blocks.append(bytes(self._out[i]))
            self._out[i] = bytearray()  # let it go before the next family's copy
        return blocks, self._lengths
