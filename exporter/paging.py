"""How an app's ``/sessions`` pages are walked: the query of each page, and what a walk learns
from the offsets the server reports (page base 0 or 1, the real page size), kept per app.

Pure bookkeeping: :meth:`~exporter.client.ApiClient.list_live_sessions` sends the requests and
feeds each page to a :class:`Walk`, which says which page to read next.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from exporter.model import InvalidSession, Paging, Session, SessionsPage

log = logging.getLogger(__name__)


def list_params(per_page: int, page_no: int) -> dict[str, str | int]:
    """The query of one page of live sessions, oldest first (so new sessions join at the end)."""
    return {
        "status": "LIVE",
        "per_page": per_page,
        "page_no": page_no,
        "sort_by": "createdAt",
        "sort_order": "ASC",
    }


@dataclass(frozen=True, slots=True)
class Listing:
    """The live sessions of an app, read page by page."""

    sessions: list[Session]  # each session once, in the API's order
    total_count: int | None  # what the API said (on the last page that said), when it said
    pages: int  # requests sent
    complete: bool  # the walk saw every session (see ApiClient.list_live_sessions)
    invalid: list[InvalidSession] = field(default_factory=list)  # listed but unreadable


@dataclass(slots=True)
class PageModel:
    """What walks learned about how an app's ``/sessions`` pages: kept between walks, re-checked
    on every page."""

    base: int = 1  # the page_no of the first page (0 or 1)
    size: int | None = None  # the items a full page holds, once a page proved to be full


class Walk:
    """One walk through an app's pages: takes in each page and says which to read next."""

    def __init__(self, model: PageModel, per_page: int, app: str) -> None:
        self.model, self.per_page, self.app = model, per_page, app
        self.read: dict[int, SessionsPage] = {}
        self.ids: set[str] = set()
        self.invalid_keys: set[object] = set()
        self.total: int | None = None
        self.totals: set[int] = set()  # more than one: sessions came or went while we read
        self.ended = False  # an empty, short or last page was read
        self.saw_first = False  # a page started at item 1: the page base is certain

    def collected(self) -> int:
        return len(self.ids) + len(self.invalid_keys)

    def add(self, page_no: int, page: SessionsPage) -> int | None:
        """Take in one page; the page_no to read next, or ``None`` when the walk is done."""
        paging = page.paging or Paging()
        if page_no == 0 and paging.page_no == 1:  # served page 0 as page 1: pages count from 1
            page_no = 1
            self._set_base(1)
        self.read[page_no] = page
        self.ids.update(s.id for s in page.sessions)
        self.invalid_keys.update(i.meeting_id or (i.page, i.index) for i in page.invalid)
        if paging.total_count is not None:
            self.total = paging.total_count
            self.totals.add(self.total)
        self._learn(page_no, page, paging)
        if (self.total is not None and self.collected() >= self.total) or self.ended:
            return None
        if page_no in (0, 1) and 1 - page_no not in self.read and self._misplaced(page_no, page):
            return 1 - page_no
        if self._at_end(page, paging):
            self.ended = True
            return self._last_resort()
        return max(self.read) + 1

    def _misplaced(self, page_no: int, page: SessionsPage) -> bool:
        """Page 1 is not the first page, or page 0 is not a page (the base is the other one)."""
        start = first_offset(page)
        empty_but_some = page.items == 0 and (self.total or 0) > 0
        return empty_but_some or (page_no == 1 and (start or 0) > 1)

    def _at_end(self, page: SessionsPage, paging: Paging) -> bool:
        if page.items == 0:
            return True
        if self.total is not None:  # a short page proves nothing: only the count or the offset
            return paging.end_offset is not None and paging.end_offset >= self.total
        if paging.start_offset is None and paging.end_offset is None:
            # No offsets to learn from: a page shorter than asked (or than known) ends it.
            return page.items < (self.model.size or self.per_page)
        return self.model.size is not None and page.items < self.model.size

    def _last_resort(self) -> int | None:
        """A walk that ended short of ``total_count`` without ever seeing item 1 reads page 0:
        the server may count pages from 0 without saying so in offsets."""
        short = self.total is not None and self.collected() < self.total
        return 0 if short and not self.saw_first and 0 not in self.read else None

    def _learn(self, page_no: int, page: SessionsPage, paging: Paging) -> None:
        start, some = first_offset(page), (self.total or 0) > 0
        if page.items and start == 1 and page_no in (0, 1):
            self.saw_first = True
            self._set_base(page_no)
        elif page_no == 1 and ((start or 0) > 1 or (page.items == 0 and some)):
            self._set_base(0)
        elif page_no == 0 and page.items == 0 and some:
            self._set_base(1)
        if not page.items:
            return
        end, total = paging.end_offset, self.total
        if (
            page.items >= self.per_page
            or (end is not None and total is not None and end < total)
            or page.items == paging.per_page  # the server's own page size: a full page
        ):
            self._set_size(page.items)
            return
        size, base = self.model.size, self.model.base
        if size is not None and (
            page.items > size or (start is not None and start != (page_no - base) * size + 1)
        ):
            self._set_size(None)  # it does not add up any more: learn it again

    def _set_base(self, base: int) -> None:
        if self.model.base != base:
            log.info("%s: /sessions pages count from %d", self.app, base)
            self.model.base = base

    def _set_size(self, size: int | None) -> None:
        if self.model.size != size:
            log.info("%s: /sessions pages hold %s items", self.app, size or "an unknown number of")
            self.model.size = size

    def listing(self, pages: int) -> Listing:
        sessions: dict[str, Session] = {}
        invalid: dict[object, InvalidSession] = {}
        for page_no in sorted(self.read):
            page = self.read[page_no]
            for session in page.sessions:
                sessions.setdefault(session.id, session)
            for bad in page.invalid:
                invalid.setdefault(bad.meeting_id or (bad.page, bad.index), bad)
        if self.total is not None:  # a count reached while others came and went proves little
            complete = self.collected() >= self.total and len(self.totals) == 1
        else:
            complete = self.ended
        return Listing(list(sessions.values()), self.total, pages, complete, list(invalid.values()))


def first_offset(page: SessionsPage) -> int | None:
    """The 1-based offset of the page's first item: ``start_offset``, or worked out from
    ``end_offset`` and the page's length when only that is given."""
    paging = page.paging
    if paging is None:
        return None
    if paging.start_offset is not None:
        return paging.start_offset
    if paging.end_offset is not None and page.items:
        return paging.end_offset - page.items + 1
    return None
