"""The session endpoints: a meeting's active session, and the app's paged ``/sessions`` listing;
plus the paging helpers every listing of the simulator shares."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs

from exporter.simulator.answers import FIELD_FAULTS, Answer, break_types, iso, ok, rtk_error
from exporter.simulator.options import PageServed, SimOptions
from exporter.simulator.world import AppKey, Key, Meeting, Session, World


def session_json(m: Meeting, s: Session) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": s.id,
        "associated_id": m.id,
        "created_at": iso(s.created),
        "live_participants": s.live,
        "max_concurrent_participants": s.peak,
        "meeting_display_name": m.name,
        "minutes_consumed": round(s.minutes, 3),
        "organization_id": m.app[1],
        "started_at": iso(s.created),
        "status": "LIVE" if s.ended is None else "ENDED",
        "type": "meeting",
        "updated_at": iso(s.updated),
        "breakout_rooms": [],
        "meta": {},
    }
    if s.ended is not None:
        d["ended_at"] = iso(s.ended)
    return d


def query_lists(query: str) -> dict[str, list[str]]:
    return parse_qs(query, keep_blank_values=True)


def query_first(query: str) -> dict[str, str]:
    return {k: v[0] for k, v in query_lists(query).items()}


@dataclass(frozen=True, slots=True)
class Page:
    """A page asked for, under the options' conventions (base, cap)."""

    page_no: int
    per_page: int
    start: int  # index of the page's first item

    @classmethod
    def asked(cls, q: dict[str, str], options: SimOptions, default: int = 20) -> Page:
        """ValueError when page_no or per_page is not an integer."""
        page_no = int(q.get("page_no") or options.page_base)
        per_page = min(options.per_page_cap, max(1, int(q.get("per_page") or default)))
        return cls(page_no, per_page, max(0, page_no - options.page_base) * per_page)

    def paging(self, total: int, served: int, options: SimOptions, wrong: bool = False) -> Any:
        """The ``paging`` object as the options shape it (None: leave it out)."""
        if options.paging == "absent":
            return None
        paging: dict[str, Any] = {
            "total_count": str(total) if wrong else total,
            "start_offset": self.start + 1 if served else 0,
            "end_offset": self.start + served if served else 0,
        }
        if options.paging == "partial":
            for name in options.paging_drop:
                del paging[name]
        return paging


BAD_PAGE = "page_no and per_page must be integers"


class SessionEndpoints:
    """``GET …/meetings/{id}/active-session`` and ``GET …/sessions``."""

    def __init__(self, world: World, options: SimOptions) -> None:
        self._world, self._options = world, options

    def active(self, app: AppKey, meeting_id: str, fault: str | None) -> Answer:
        change = FIELD_FAULTS.get(fault or "")
        world = self._world
        with world.lock:
            m = world.meetings.get(meeting_id)
            data: dict[str, Any] | None = None
            if m is None or m.app != app:
                if self._options.unknown_meeting == "not_found":
                    return rtk_error(404, "Meeting not found")
            else:
                world.advance(m, world.sim_now())
                if m.session is not None:
                    data = session_json(m, m.session)
                elif change is not None:
                    data = session_json(m, Session("x", world.t0, world.t0, 1, 1))
        if data is None:
            return rtk_error(404, f"No active session found for meeting_id {meeting_id}")
        if change is not None:
            data = change(data)
        return ok({"success": True, "data": data})

    def listing(
        self, app: AppKey, query: str, fault: str | None
    ) -> tuple[Answer, PageServed | None]:
        q = query_first(query)
        try:
            page = Page.asked(q, self._options)
        except ValueError:
            return rtk_error(400, BAD_PAGE), None
        status, assoc = (q.get("status") or "").upper(), q.get("associated_id")
        search = (q.get("search") or "").casefold()
        world = self._world
        with world.lock:
            now = world.sim_now()
            world.advance_due(now)
            keys = self._matching(app, status, assoc, search)
            chosen = keys[page.start : page.start + page.per_page]
            items = [self._render(key, now) for key in chosen]
            total = len(keys)
        wrong = fault == "wrong_types"
        change = FIELD_FAULTS.get(fault or "")
        if wrong:
            items = [break_types(d) for d in items]
        elif change is not None and items:
            items[0] = change(items[0])
        payload: dict[str, Any] = {"success": True, "data": {"sessions": items}}
        if (paging := page.paging(total, len(items), self._options, wrong)) is not None:
            payload["paging"] = paging
        served = PageServed(app[0], app[1], page.page_no, page.per_page, len(items), total)
        return ok(payload), served

    def endpoint(self, app: AppKey, _arg: str, query: str, fault: str | None) -> Answer:
        """The listing, then what follows a page (churn, ``on_page``) before it is sent."""
        ans, page = self.listing(app, query, fault)
        if page is not None:
            self.after_page(page)
        return ans

    def after_page(self, page: PageServed) -> None:
        """Churn, then the test hook, once a page is built and before it is sent."""
        if self._options.churn_per_page:
            with self._world.lock:
                self._world.churn((page.account_id, page.app_id), self._options.churn_per_page)
        if self._options.on_page is not None:
            self._options.on_page(page)

    def _matching(self, app: AppKey, status: str, assoc: str | None, search: str) -> list[Key]:
        """Listing keys of the app's sessions that match the filters, in listing order."""
        world = self._world
        keys = world.index[app].by_status(status)
        if keys is None:
            return []
        if assoc is not None:
            m = world.meetings.get(assoc)
            if m is None or m.app != app or m.session is None:
                return []
            key = m.key()
            items = keys.items()
            i = bisect_left(items, key)
            found = [key] if i < len(items) and items[i] == key else []
        else:
            found = keys.items()
        if search:  # rare: a scan of the app's sessions
            found = [k for k in found if search in world.meetings[k[2]].name.casefold()]
        return found

    def _render(self, key: Key, now: float) -> dict[str, Any]:
        m = self._world.meetings[key[2]]
        self._world.advance(m, now)
        return session_json(m, cast(Session, m.session))
