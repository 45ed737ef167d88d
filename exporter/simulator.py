"""An in-process imitation of the Cloudflare RealtimeKit (formerly Dyte) REST API.

The simulator is a real HTTP server (stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive) that
serves, under ``/client/v4``, the two read endpoints the exporter relies on:

* ``GET /accounts/{account}/realtime/kit/{app}/meetings/{meeting}/active-session`` - the meeting's
  current session in RealtimeKit's ``{"success": true, "data": {...}}`` envelope, or the RealtimeKit
  404 ``{"success": false, "error": {...}}`` when nobody is in the meeting;
* ``GET /accounts/{account}/realtime/kit/{app}/sessions`` - the current sessions of the app's
  meetings, filtered by ``status``, ``associated_id`` and ``search`` and paged with ``page_no``
  (1-based, 0 is read as 1) and ``per_page`` (default 20, clamped to 1..100). ``paging`` carries
  ``total_count`` and the 1-based ``start_offset``/``end_offset`` of the page within the result;
  an empty page (nothing matches, or a page past the end) has ``start_offset = end_offset = 0``.
  Only each meeting's *current* session is known (LIVE, or ENDED until it is cleared): no history.

Errors produced by "Cloudflare's edge" (bad token, rate limit, unknown route or account/app) use
Cloudflare's ``{"success": false, "errors": [...], "messages": [], "result": null}`` shape. With
``rate_limit=(N, W)`` every token gets fixed windows of W seconds starting at its first request;
past N requests the rest of the window answers 429 with ``Retry-After``. ``Ratelimit`` and
``Ratelimit-Policy`` headers are sent on every authenticated answer.

With ``auto=True`` each meeting cycles, in simulated seconds (elapsed clock seconds x ``speed``):
idle (404) for 20-120 s, a LIVE session for 2-10 min whose participant count random-walks between
1 and 12 every 5-15 s, then ENDED (live 0) for about 60 s, then idle again. State is advanced
lazily, from the clock, whenever a meeting is touched; there is no ticking thread, so a fake
``clock`` makes everything deterministic (and a ``seed`` makes it reproducible). About half of the
meetings start LIVE. ``minutes_consumed`` integrates ``live_participants`` over simulated time.

Faults (``FaultConfig`` probabilities, or a per-meeting forced fault) imitate what a client meets in
the wild: 500, 502/503 HTML pages, slow answers, connection resets, non-JSON bodies and bodies with
wrong JSON types. Control endpoints (``POST /_sim/meetings/{id}``, ``GET /_sim/stats``) and
``GET /-/healthy`` need no token. Run standalone with ``python -m exporter.simulator --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hmac
import json
import math
import os
import random
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, cast
from urllib.parse import parse_qs, unquote

__all__ = ["FaultConfig", "Simulator", "main"]

DEFAULT_ACCOUNT_ID = "023e105f4ecef8ad9ca31a8372d0c353"
DEFAULT_APP_ID = "6f0a8a2c3b8e4f62a1d2c3b4e5f60718"
FAULT_KINDS = frozenset({"500", "503", "timeout", "reset", "non_json", "wrong_types", "401", "429"})
_TOPICS = (
    "Weekly sync",
    "Design review",
    'Café "Zürich" stand-up',
    "Sprint planning",
    "Ops \\ on-call handover",
    "Customer demo",
    "All hands",
    "Retro",
    "Interviews",
    "1:1 catch-up",
)
_JSON = "application/json; charset=utf-8"
_HTML = "text/html; charset=utf-8"
_IDLE, _LIVE, _ENDED = 0, 1, 2
_LOG_SIZE = 100_000


@dataclass
class FaultConfig:
    """Per-request fault probabilities (0..1) for the active-session and /sessions endpoints."""

    error_500: float = 0.0
    error_503: float = 0.0  # answers 502 or 503 (picked at random) with an HTML body
    timeout: float = 0.0  # sleeps `slow_seconds`, then answers normally
    reset: float = 0.0  # closes the connection abruptly (RST), no answer
    non_json: float = 0.0  # 200 text/html "<html>oops</html>"
    wrong_types: float = 0.0  # 200 with live_participants a string and id a number
    latency_seconds: float = 0.0  # added to every API answer
    slow_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("error_500", "error_503", "timeout", "reset", "non_json", "wrong_types"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"FaultConfig.{name} must be within 0..1, got {value!r}")
        if self.latency_seconds < 0 or self.slow_seconds < 0:
            raise ValueError("FaultConfig latency_seconds and slow_seconds must be >= 0")


@dataclass(slots=True)
class _Session:
    id: str
    created: float  # clock (epoch) times
    updated: float
    live: int
    peak: int
    minutes: float = 0.0
    ended: float | None = None


@dataclass(slots=True, eq=False)
class _Meeting:
    id: str
    name: str
    app: tuple[str, str]
    rng: random.Random
    session: _Session | None = None
    phase: int = _IDLE
    phase_until: float = math.inf  # simulated seconds
    next_change: float = math.inf
    last: float = 0.0  # simulated time up to which minutes are integrated
    fault: str | None = None


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes = b""
    content_type: str = _JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    reset: bool = False


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _cf_error(status: int, code: int, message: str) -> _Answer:
    body = {"success": False, "errors": [{"code": code, "message": message}], "messages": []}
    return _Answer(status, _dumps({**body, "result": None}))


def _rtk_error(status: int, message: str) -> _Answer:
    error = {"code": status, "message": message}
    return _Answer(status, _dumps({"success": False, "error": error}))


@functools.lru_cache(maxsize=4096)
def _iso_seconds(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _iso(t: float) -> str:
    ms = round(t * 1000)
    return f"{_iso_seconds(ms // 1000)}.{ms % 1000:03d}Z"


def _bearer(header: str | None) -> str:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return ""


def _route(path: str) -> tuple[str, str, str, str] | None:
    """(kind, account, app, meeting) for an API path under /client/v4, None if unknown."""
    p = path.split("/")
    if len(p) < 9 or p[1:4] != ["client", "v4", "accounts"] or p[5:7] != ["realtime", "kit"]:
        return None
    account, app, rest = unquote(p[4]), unquote(p[7]), p[8:]
    if rest == ["sessions"]:
        return "sessions", account, app, ""
    if len(rest) == 3 and rest[0] == "meetings" and rest[2] == "active-session" and rest[1]:
        return "active", account, app, unquote(rest[1])
    return None


class Simulator:
    """A RealtimeKit API look-alike; see the module docstring. Control methods are thread-safe."""

    def __init__(
        self,
        *,
        token: str,
        account_id: str = DEFAULT_ACCOUNT_ID,
        app_id: str = DEFAULT_APP_ID,
        meetings: int | list[str] = 5,
        auto: bool = True,
        speed: float = 1.0,
        seed: int | None = None,
        faults: FaultConfig | None = None,
        rate_limit: tuple[int, float] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not token:
            raise ValueError("token must not be empty")
        if not speed > 0:
            raise ValueError("speed must be > 0")
        if rate_limit is not None and (rate_limit[0] < 0 or not rate_limit[1] > 0):
            raise ValueError("rate_limit must be (requests >= 0, window_seconds > 0)")
        self._token = token
        self._auto = auto
        self._speed = float(speed)
        self._seed = seed
        self._faults = faults or FaultConfig()
        self._rate_limit = rate_limit
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self._ids_rng = random.Random(seed)
        self._fault_rng = random.Random(None if seed is None else f"faults:{seed}")
        self._apps: dict[tuple[str, str], list[_Meeting]] = {}
        self._meetings: dict[str, _Meeting] = {}
        self._windows: dict[str, tuple[float, int]] = {}
        self._total = 0
        self._per_token: dict[str, int] = {}
        self._statuses: dict[int, int] = {}
        self._log: deque[tuple[float, str, int]] = deque(maxlen=_LOG_SIZE)
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.account_id = account_id
        self.app_id = app_id
        self._main_app = (account_id, app_id)
        self.add_app(account_id, app_id, meetings)

    # -- setup ------------------------------------------------------------------------------

    @property
    def meeting_ids(self) -> list[str]:
        """Meeting ids of the constructor's app, in creation order (a copy)."""
        with self._lock:
            return [m.id for m in self._apps[self._main_app]]

    def add_app(self, account_id: str, app_id: str, meetings: int | list[str]) -> list[str]:
        """Add meetings to an account/app (created if needed); returns the new meeting ids."""
        with self._lock:
            if isinstance(meetings, int):
                if meetings < 0:
                    raise ValueError("meetings must be >= 0")
                ids = [self._new_uuid() for _ in range(meetings)]
            else:
                ids = list(meetings)
            if any(not isinstance(i, str) or not i for i in ids) or len(set(ids)) != len(ids):
                raise ValueError("meeting ids must be unique non-empty strings")
            if clash := [i for i in ids if i in self._meetings]:
                raise ValueError(f"meeting ids already exist: {clash}")
            key = (account_id, app_id)
            app = self._apps.setdefault(key, [])
            now = self._sim_now()
            for mid in ids:
                n = len(app) + 1
                name = f"Meeting {n} – {_TOPICS[(n - 1) % len(_TOPICS)]}"
                rng = random.Random(None if self._seed is None else f"{self._seed}:{mid}")
                m = _Meeting(mid, name, key, rng, last=now)
                self._init_auto(m, now)
                app.append(m)
                self._meetings[mid] = m
            return ids

    def add_meeting(self, meeting_id: str) -> None:
        """Add one meeting to the constructor's app."""
        self.add_app(*self._main_app, [meeting_id])

    def _new_uuid(self) -> str:
        return str(uuid.UUID(int=self._ids_rng.getrandbits(128), version=4))

    def _init_auto(self, m: _Meeting, now: float) -> None:
        if not self._auto:
            return
        rng = m.rng
        if rng.random() < 0.5:  # already LIVE for a while
            age, n = rng.uniform(10.0, 300.0), rng.randint(1, 8)
            s = self._start_session(m, now - age, n)
            s.minutes, s.peak = n * age / 60.0, n + rng.randint(0, 3)
            s.updated = self._real(now - rng.uniform(0.0, min(age, 15.0)))
            m.phase_until, m.next_change = now + rng.uniform(30.0, 480.0), now + rng.uniform(1, 15)
        else:
            m.phase_until = now + rng.uniform(0.0, 120.0)

    # -- simulated time ---------------------------------------------------------------------

    def _sim_now(self) -> float:
        return (self._clock() - self._t0) * self._speed

    def _real(self, sim_t: float) -> float:
        return self._t0 + sim_t / self._speed

    def _advance(self, m: _Meeting, now: float) -> None:
        """Bring a meeting up to simulated time `now` (caller holds the lock)."""
        if self._auto:
            while True:
                t = min(m.phase_until, m.next_change) if m.phase == _LIVE else m.phase_until
                if t > now:
                    break
                self._integrate(m, t)
                self._step(m, t)
        self._integrate(m, now)

    @staticmethod
    def _integrate(m: _Meeting, t: float) -> None:
        if t <= m.last:
            return
        s = m.session
        if s is not None and s.ended is None:
            s.minutes += s.live * (t - m.last) / 60.0
        m.last = t

    def _step(self, m: _Meeting, t: float) -> None:
        rng, s = m.rng, m.session
        if m.phase == _IDLE or s is None:
            self._start_session(m, t, rng.randint(1, 4))
        elif m.phase == _LIVE and m.next_change < m.phase_until:
            step = rng.choice((-2, -1, -1, 1, 1, 2))
            self._set_live(s, t, max(1, min(12, s.live + step)))
            m.next_change = t + rng.uniform(5.0, 15.0)
        elif m.phase == _LIVE:
            self._end(m, t)
        else:
            self._clear(m, t)

    def _start_session(self, m: _Meeting, t: float, n: int) -> _Session:
        real = self._real(t)
        session_id = str(uuid.UUID(int=m.rng.getrandbits(128), version=4))
        m.session = _Session(session_id, real, real, n, n)
        m.phase, m.phase_until = _LIVE, t + m.rng.uniform(120.0, 600.0)
        m.next_change = t + m.rng.uniform(5.0, 15.0)
        return m.session

    def _set_live(self, s: _Session, t: float, n: int) -> None:
        if n != s.live:
            s.live, s.peak, s.updated = n, max(s.peak, n), self._real(t)

    def _end(self, m: _Meeting, t: float) -> None:
        if m.session is not None and m.session.ended is None:
            real = self._real(t)
            m.session.live, m.session.ended, m.session.updated = 0, real, real
        m.phase, m.phase_until, m.next_change = _ENDED, t + m.rng.uniform(50.0, 70.0), math.inf

    def _clear(self, m: _Meeting, t: float) -> None:
        m.session, m.phase, m.next_change = None, _IDLE, math.inf
        m.phase_until = t + m.rng.uniform(20.0, 120.0)

    def _touch(self, meeting_id: str) -> tuple[_Meeting, float]:
        m = self._meetings.get(meeting_id)
        if m is None:
            raise KeyError(f"unknown meeting {meeting_id!r}")
        now = self._sim_now()
        self._advance(m, now)
        return m, now

    # -- deterministic control --------------------------------------------------------------

    def set_participants(self, meeting_id: str, n: int) -> None:
        """Set live participants; n > 0 starts a new LIVE session if there is none (or it ended)."""
        if n < 0:
            raise ValueError("participants must be >= 0")
        with self._lock:
            m, now = self._touch(meeting_id)
            if m.session is None or m.session.ended is not None:
                if n > 0:
                    self._start_session(m, now, n)
            else:
                self._set_live(m.session, now, n)

    def end_session(self, meeting_id: str) -> None:
        """Everyone leaves: the session turns ENDED (still served until clear_session)."""
        with self._lock:
            m, now = self._touch(meeting_id)
            if m.session is not None:
                self._end(m, now)

    def clear_session(self, meeting_id: str) -> None:
        """Drop the meeting's session: active-session answers 404 from now on."""
        with self._lock:
            m, now = self._touch(meeting_id)
            self._clear(m, now)

    def set_fault(self, meeting_id: str, kind: str | None) -> None:
        """Force a fault on every active-session request of this meeting (None clears it)."""
        if kind is not None and kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        with self._lock:
            self._touch(meeting_id)[0].fault = kind

    def session(self, meeting_id: str) -> dict[str, Any] | None:
        """The meeting's current session object as it would be served, or None."""
        with self._lock:
            m, _ = self._touch(meeting_id)
            return None if m.session is None else self._session_json(m, m.session)

    def request_count(self, token: str | None = None) -> int:
        """API requests received (control and health endpoints excluded), total or per token."""
        with self._lock:
            return self._total if token is None else self._per_token.get(token, 0)

    def status_counts(self) -> dict[int, int]:
        """HTTP statuses answered so far; 0 counts connections reset without an answer."""
        with self._lock:
            return dict(self._statuses)

    def request_log(self) -> list[tuple[float, str, int]]:
        """(clock time received, request target with query, status) of the last 100k requests."""
        with self._lock:
            return list(self._log)

    def _session_json(self, m: _Meeting, s: _Session) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": s.id,
            "associated_id": m.id,
            "created_at": _iso(s.created),
            "live_participants": s.live,
            "max_concurrent_participants": s.peak,
            "meeting_display_name": m.name,
            "minutes_consumed": round(s.minutes, 3),
            "organization_id": m.app[1],
            "started_at": _iso(s.created),
            "status": "LIVE" if s.ended is None else "ENDED",
            "type": "meeting",
            "updated_at": _iso(s.updated),
            "breakout_rooms": [],
            "meta": {},
        }
        if s.ended is not None:
            d["ended_at"] = _iso(s.ended)
        return d

    # -- server lifecycle -------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._stop.clear()
        self._server = _Server((host, port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and close open connections (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stop.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Simulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator not started")
        host = str(self._server.server_address[0])
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/client/v4"

    # -- request handling -------------------------------------------------------------------

    def _dispatch(self, h: _Handler, method: str) -> None:
        length = h.fields.get("content-length", "")
        body = h.rfile.read(int(length)) if length.isdigit() else b""
        if "transfer-encoding" in h.fields:
            h.close_connection = True
        target = h.path
        path = target.partition("?")[0]
        if path.startswith("/_sim/"):
            ans = self._control(method, path, body)
        elif path == "/-/healthy":
            ans = _Answer(200, b"ok", "text/plain; charset=utf-8")
        else:
            now, token = self._clock(), _bearer(h.fields.get("authorization"))
            with self._lock:
                self._total += 1
                self._per_token[token] = self._per_token.get(token, 0) + 1
            ans = self._answer(method, target, token, now)
            if self._faults.latency_seconds > 0:
                self._stop.wait(self._faults.latency_seconds)
            with self._lock:  # record before answering so callers see it once they have the answer
                status = 0 if ans.reset else ans.status
                self._statuses[status] = self._statuses.get(status, 0) + 1
                self._log.append((now, target, status))
        h.send_answer(ans)

    def _answer(self, method: str, target: str, token: str, now: float) -> _Answer:
        path, _, query = target.partition("?")
        route = _route(path)
        if route is None:
            return _cf_error(404, 7000, "No route for that URI")
        kind, account, app_id, meeting_id = route
        if method != "GET":
            ans = _cf_error(405, 10405, f"Method {method} not allowed")
            ans.headers.append(("Allow", "GET"))
            return ans
        if not hmac.compare_digest(token.encode(), self._token.encode()):
            return _cf_error(401, 10000, "Authentication error")
        rl_headers, retry_after = self._rate_check(token, now)
        if retry_after is not None:
            ans = self._too_many(retry_after)
        else:
            ans = self._serve(kind, (account, app_id), meeting_id, path, query)
        ans.headers.extend(rl_headers)
        return ans

    def _too_many(self, retry_after: int) -> _Answer:
        limit, window = self._rate_limit or (1200, 300.0)
        ans = _cf_error(429, 971, f"More than {limit} requests per {window:g} seconds reached")
        ans.headers.append(("Retry-After", str(retry_after)))
        return ans

    def _rate_check(self, token: str, now: float) -> tuple[list[tuple[str, str]], int | None]:
        if self._rate_limit is None:
            return [], None
        limit, window = self._rate_limit
        with self._lock:
            start, count = self._windows.get(token, (-math.inf, 0))
            if now >= start + window:
                start, count = now, 0
            count += 1
            self._windows[token] = (start, count)
        left = max(1, math.ceil(start + window - now))
        headers = [
            ("Ratelimit", f'"default";r={max(0, limit - count)};t={left}'),
            ("Ratelimit-Policy", f'"default";q={limit};w={window:g}'),
        ]
        return headers, (left if count > limit else None)

    def _draw_fault(self) -> str | None:
        f, r = self._faults, self._fault_rng.random()
        for kind, p in (
            ("reset", f.reset),
            ("timeout", f.timeout),
            ("500", f.error_500),
            ("503", f.error_503),
            ("non_json", f.non_json),
            ("wrong_types", f.wrong_types),
        ):
            if r < p:
                return kind
            r -= p
        return None

    def _serve(
        self, kind: str, app: tuple[str, str], meeting_id: str, path: str, query: str
    ) -> _Answer:
        with self._lock:
            if app not in self._apps:
                msg = f"Could not route to {path}, perhaps your object identifier is invalid?"
                return _cf_error(404, 7003, msg)
            m = self._meetings.get(meeting_id)
            forced = m.fault if m is not None and m.app == app else None
            fault = forced if forced is not None else self._draw_fault()
            status_503 = 503 if fault == "503" and self._fault_rng.random() < 0.5 else 502
        if fault == "reset":
            return _Answer(0, reset=True)
        if fault == "timeout":
            self._stop.wait(self._faults.slow_seconds)
        elif fault == "500":
            return _rtk_error(500, "Internal Server Error")
        elif fault == "503":
            page = f"<html><body><h1>{status_503} Service Unavailable</h1></body></html>"
            return _Answer(status_503, page.encode(), _HTML)
        elif fault == "401":
            return _cf_error(401, 10000, "Authentication error")
        elif fault == "429":
            return self._too_many(5)
        elif fault == "non_json":
            return _Answer(200, b"<html>oops</html>", _HTML)
        wrong = fault == "wrong_types"
        if kind == "active":
            return self._active_session(app, meeting_id, wrong)
        return self._sessions(app, query, wrong)

    @staticmethod
    def _break_types(d: dict[str, Any]) -> dict[str, Any]:
        return {**d, "id": 12345, "live_participants": str(d["live_participants"])}

    def _active_session(self, app: tuple[str, str], meeting_id: str, wrong: bool) -> _Answer:
        with self._lock:
            m = self._meetings.get(meeting_id)
            data: dict[str, Any] | None = None
            if m is not None and m.app == app:
                self._advance(m, self._sim_now())
                if m.session is not None:
                    data = self._session_json(m, m.session)
                elif wrong:
                    data = self._session_json(m, _Session("x", self._t0, self._t0, 1, 1))
        if data is None:
            return _rtk_error(404, f"No active session found for meeting_id {meeting_id}")
        if wrong:
            data = self._break_types(data)
        return _Answer(200, _dumps({"success": True, "data": data}))

    def _sessions(self, app: tuple[str, str], query: str, wrong: bool) -> _Answer:
        q = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        try:
            page_no = max(1, int(q.get("page_no") or 1))
            per_page = min(100, max(1, int(q.get("per_page") or 20)))
        except ValueError:
            return _rtk_error(400, "page_no and per_page must be integers")
        status, assoc = (q.get("status") or "").upper(), q.get("associated_id")
        search = (q.get("search") or "").casefold()
        found: list[tuple[float, str, dict[str, Any]]] = []
        with self._lock:
            now = self._sim_now()
            for m in self._apps[app]:
                if (assoc is not None and m.id != assoc) or search not in m.name.casefold():
                    continue
                self._advance(m, now)
                s = m.session
                if s is None or (status and status != ("LIVE" if s.ended is None else "ENDED")):
                    continue
                found.append((s.created, s.id, self._session_json(m, s)))
        found.sort(key=lambda item: (item[0], item[1]))
        start = (page_no - 1) * per_page
        page = [d for _, _, d in found[start : start + per_page]]
        if wrong:
            page = [self._break_types(d) for d in page]
        paging: dict[str, Any] = {
            "total_count": str(len(found)) if wrong else len(found),
            "start_offset": start + 1 if page else 0,
            "end_offset": start + len(page) if page else 0,
        }
        return _Answer(200, _dumps({"success": True, "data": {"sessions": page}, "paging": paging}))

    def _control(self, method: str, path: str, body: bytes) -> _Answer:
        if path == "/_sim/stats":
            if method != "GET":
                return _Answer(405, _dumps({"ok": False, "error": "use GET"}))
            with self._lock:
                now = self._sim_now()
                live = 0
                for m in self._meetings.values():
                    self._advance(m, now)
                    live += m.session is not None and m.session.ended is None
                stats = {
                    "requests": self._total,
                    "status_counts": {str(k): v for k, v in sorted(self._statuses.items())},
                    "meetings": len(self._meetings),
                    "live_sessions": live,
                }
            return _Answer(200, _dumps(stats))
        prefix = "/_sim/meetings/"
        if not path.startswith(prefix) or len(path) == len(prefix):
            return _Answer(404, _dumps({"ok": False, "error": "unknown control endpoint"}))
        if method != "POST":
            return _Answer(405, _dumps({"ok": False, "error": "use POST"}))
        meeting_id = unquote(path[len(prefix) :])
        try:
            cmd = json.loads(body or b"{}")
            if not isinstance(cmd, dict):
                raise ValueError("body must be a JSON object")
            if "fault" in cmd:
                self.set_fault(meeting_id, cmd["fault"])
            if "participants" in cmd:
                n = cmd["participants"]
                if not isinstance(n, int) or isinstance(n, bool):
                    raise ValueError("participants must be an integer")
                self.set_participants(meeting_id, n)
            if cmd.get("end"):
                self.end_session(meeting_id)
            if cmd.get("clear"):
                self.clear_session(meeting_id)
            session = self.session(meeting_id)
        except KeyError:
            return _Answer(404, _dumps({"ok": False, "error": f"unknown meeting {meeting_id}"}))
        except (ValueError, TypeError) as exc:
            return _Answer(400, _dumps({"ok": False, "error": str(exc)}))
        return _Answer(200, _dumps({"ok": True, "session": session}))

    def _register(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "realtimekit-simulator"
    sys_version = ""
    wbufsize = 1 << 16  # headers and body leave in one send() at flush
    disable_nagle_algorithm = True
    fields: dict[str, str]
    raw_requestline: bytes

    def _sim(self) -> Simulator:
        return cast(_Server, self.server).sim

    def setup(self) -> None:
        super().setup()
        self._sim()._register(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._sim()._register(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def parse_request(self) -> bool:
        """Lean stand-in for the stdlib parser, which runs the email package on every request."""
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "latin-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or words[2] not in ("HTTP/1.0", "HTTP/1.1"):
            self.request_version = "HTTP/1.0"
            self.send_error(400, "Bad request line")
            return False
        self.command, self.path, self.request_version = words
        fields: dict[str, str] = {}
        while True:
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, sep, value = str(line, "latin-1").partition(":")
            if not sep or len(line) > 65536 or len(fields) > 100:
                self.send_error(400, "Bad header")
                return False
            fields[name.strip().lower()] = value.strip()
        self.fields = fields
        keep = words[2] == "HTTP/1.1" and fields.get("connection", "").lower() != "close"
        self.close_connection = not keep
        return True

    def do_GET(self) -> None:
        self._sim()._dispatch(self, self.command)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def send_answer(self, ans: _Answer) -> None:
        if ans.reset:  # abrupt close: linger 0 turns close() into a RST
            self.close_connection = True
            with contextlib.suppress(OSError):
                linger = struct.pack("ii", 1, 0)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            self.connection.close()
            return
        try:
            self.send_response(ans.status)
            self.send_header("Content-Type", ans.content_type)
            self.send_header("Content-Length", str(len(ans.body)))
            for name, value in ans.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(ans.body)
            self.wfile.flush()
        except OSError:  # the client went away (e.g. it timed out first)
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sim = sim
        super().__init__(address, _Handler)

    def server_bind(self) -> None:  # skip HTTPServer's reverse DNS lookup
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"probability must be within 0..1: {text}")
    return value


def _rate_limit(text: str) -> tuple[int, float]:
    n, sep, w = text.partition("/")
    try:
        limit, window = int(n), float(w)
    except ValueError:
        limit, window = -1, 0.0
    if not sep or limit < 0 or window <= 0:
        raise argparse.ArgumentTypeError(f"expected N/W such as 1200/300, got {text!r}")
    return limit, window


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def main(argv: list[str] | None = None) -> int:
    """Run a standalone simulator until SIGINT/SIGTERM."""
    ap = argparse.ArgumentParser(
        prog="python -m exporter.simulator", description="Simulated Cloudflare RealtimeKit API."
    )
    ap.add_argument("--listen", type=_listen, default=("127.0.0.1", 8080), help="HOST:PORT")
    ap.add_argument("--token", default=os.environ.get("CLOUDFLARE_API_TOKEN") or "demo-token")
    ap.add_argument("--account-id", default=DEFAULT_ACCOUNT_ID)
    ap.add_argument("--app-id", default=DEFAULT_APP_ID)
    ap.add_argument("--meetings", type=int, default=5)
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--rate-limit", type=_rate_limit, default=None, help="N/W, e.g. 1200/300")
    for name in ("500", "503", "timeout", "reset", "non-json", "wrong-types"):
        ap.add_argument(f"--fault-{name}", type=_probability, default=0.0, metavar="P")
    ap.add_argument("--latency", type=float, default=0.0, metavar="SECONDS")
    ap.add_argument("--slow-seconds", type=float, default=30.0, metavar="SECONDS")
    args = ap.parse_args(argv)
    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        faults = FaultConfig(
            error_500=args.fault_500,
            error_503=args.fault_503,
            timeout=args.fault_timeout,
            reset=args.fault_reset,
            non_json=args.fault_non_json,
            wrong_types=args.fault_wrong_types,
            latency_seconds=args.latency,
            slow_seconds=args.slow_seconds,
        )
        sim = Simulator(
            token=args.token,
            account_id=args.account_id,
            app_id=args.app_id,
            meetings=args.meetings,
            speed=args.speed,
            seed=args.seed,
            faults=faults,
            rate_limit=args.rate_limit,
        )
        sim.start(*args.listen)
    except (ValueError, OSError) as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    print(
        f"RealtimeKit simulator: base_url={sim.base_url} account_id={sim.account_id} "
        f"app_id={sim.app_id} meetings={','.join(sim.meeting_ids)}",
        flush=True,
    )
    try:
        while not done.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
