"""The API side of the simulator: routes under ``/client/v4``, the token check, the rate limit,
faults, and the record of what was asked and answered."""

from __future__ import annotations

import hmac
import math
import threading
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from exporter.simulator.answers import Answer, cf_error, ok
from exporter.simulator.faults import Faults, too_many
from exporter.simulator.options import SimOptions
from exporter.simulator.world import AppKey, World

# (app, the path's id or "", query, fault) → the answer
Endpoint = Callable[[AppKey, str, str, str | None], Answer]
_LOG_SIZE = 100_000
# route shapes under /accounts/{account}/realtime/kit/{app}/: "*" is the id of the request
_ROUTES: dict[tuple[str, ...], str] = {
    ("sessions",): "sessions",
    ("meetings", "*", "active-session"): "active",
    ("recordings",): "recordings",
    ("recordings", "active-recording", "*"): "active_recording",
    ("livestreams",): "livestreams",
    ("meetings", "*", "active-livestream"): "active_livestream",
    ("analytics", "daywise"): "daywise",
    ("webhooks",): "webhooks",
    ("sessions", "peer-report", "*"): "peer_report",
}
ENDPOINTS = frozenset(_ROUTES.values())


def route(path: str) -> tuple[str, str, str, str] | None:
    """(endpoint, account, app, id) for an API path under /client/v4, None if unknown."""
    p = path.split("/")
    if len(p) < 9 or p[1:4] != ["client", "v4", "accounts"] or p[5:7] != ["realtime", "kit"]:
        return None
    account, app, rest = unquote(p[4]), unquote(p[7]), p[8:]
    for shape, kind in _ROUTES.items():
        if len(shape) != len(rest):
            continue
        ids = [r for s, r in zip(shape, rest, strict=True) if s == "*"]
        fixed = all(s == r for s, r in zip(shape, rest, strict=True) if s != "*")
        if fixed and all(ids):
            return kind, account, app, unquote(ids[0]) if ids else ""
    return None


def bearer(header: str | None) -> str:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return ""


class Api:
    """Answers API requests: route, token, rate limit, fault, then the endpoint's handler."""

    def __init__(self, world: World, options: SimOptions, faults: Faults) -> None:
        self._world, self._faults = world, faults
        self._token = options.token
        self._rate_limit = options.rate_limit
        self._endpoints: dict[str, Endpoint] = {}
        self.forced: dict[tuple[AppKey, str], str] = {}  # (app, endpoint) → fault on every call
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}
        self._total = 0
        self._per_token: dict[str, int] = {}
        self._statuses: dict[int, int] = {}
        self._log: deque[tuple[float, str, int]] = deque(maxlen=_LOG_SIZE)

    def add(self, endpoint: str, handler: Endpoint) -> None:
        self._endpoints[endpoint] = handler

    def force(self, endpoint: str, kind: str | None, app: AppKey) -> None:
        """Force fault ``kind`` (None: none) on every request of an app's endpoint."""
        with self._world.lock:
            if app not in self._world.apps:
                raise KeyError(f"unknown app {app[0]}/{app[1]}")
            if endpoint == "active" or endpoint not in self._endpoints:
                raise ValueError(f"unknown endpoint {endpoint!r}")
            if kind is None:
                self.forced.pop((app, endpoint), None)
            else:
                self.forced[(app, endpoint)] = kind

    def handle(self, method: str, target: str, authorization: str | None, now: float) -> Answer:
        """Answer one API request and record it (before the caller sends the answer)."""
        token = bearer(authorization)
        with self._lock:
            self._total += 1
            self._per_token[token] = self._per_token.get(token, 0) + 1
        ans = self._answer(method, target, token, now)
        self._faults.latency()
        with self._lock:  # record before answering so callers see it once they have the answer
            status = 0 if ans.reset else ans.status
            self._statuses[status] = self._statuses.get(status, 0) + 1
            self._log.append((now, target, status))
        return ans

    def request_count(self, token: str | None = None) -> int:
        with self._lock:
            return self._total if token is None else self._per_token.get(token, 0)

    def status_counts(self) -> dict[int, int]:
        with self._lock:
            return dict(self._statuses)

    def request_log(self) -> list[tuple[float, str, int]]:
        with self._lock:
            return list(self._log)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            statuses = {str(k): v for k, v in sorted(self._statuses.items())}
            return {"requests": self._total, "status_counts": statuses}

    def _answer(self, method: str, target: str, token: str, now: float) -> Answer:
        path, _, query = target.partition("?")
        found = route(path)
        if found is None or found[0] not in self._endpoints:
            return cf_error(404, 7000, "No route for that URI")
        kind, account, app_id, arg = found
        if method != "GET":
            ans = cf_error(405, 10405, f"Method {method} not allowed")
            ans.headers.append(("Allow", "GET"))
            return ans
        if not hmac.compare_digest(token.encode(), self._token.encode()):
            return cf_error(401, 10000, "Authentication error")
        rl_headers, retry_after = self._rate_check(token, now)
        if retry_after is not None:
            ans = too_many(self._rate_limit, retry_after)
        else:
            ans = self._serve(kind, (account, app_id), arg, path, query)
        ans.headers.extend(rl_headers)
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

    def _serve(self, kind: str, app: AppKey, arg: str, path: str, query: str) -> Answer:
        world = self._world
        with world.lock:
            if app not in world.apps:
                msg = f"Could not route to {path}, perhaps your object identifier is invalid?"
                return cf_error(404, 7003, msg)
            if kind == "active":
                m = world.meetings.get(arg)
                forced = m.fault if m is not None and m.app == app else None
            else:
                forced = self.forced.get((app, kind))
        fault, status_503 = self._faults.draw(forced)
        ans = self._faults.answer(fault, status_503, kind)
        if ans is None:
            ans = self._endpoints[kind](app, arg, query, fault)
        return self._faults.dress(ans, fault)


def wrong_types(payload: dict[str, Any], fault: str | None) -> Answer:
    """The answer of an endpoint without field faults of its own: ``wrong_types`` makes its
    ``data`` a number; other field faults leave it as it is."""
    if fault == "wrong_types":
        payload = {**payload, "data": 12345}
    return ok(payload)
