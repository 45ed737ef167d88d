"""The exporter's WSGI app: landing page, health, readiness, config, reload and metrics.

The app owns the answers: it negotiates the metrics format (as prometheus_client does), gzip
(honouring q-values), ``name[]`` filters and ``HEAD``, and hands the collectors to
:func:`exporter.exposition.render` for the body; only escaping schemes that would change our
names fall back to prometheus_client's own WSGI app. Serving it over HTTP(S) is the web wing's
job (:mod:`exporter.web`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from exporter.exposition import PartsGzip, render
from exporter.web.wsgi import StartResponse, WsgiApp

#: The exporter's port when --web.listen-address is not given.
DEFAULT_PORT = 9877


def accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header admits gzip: ``gzip`` or ``*`` with a q-value above 0
    (``gzip;q=0`` refuses it, whatever prometheus_client's own check says)."""
    verdict: bool | None = None
    for item in (header or "").split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        coding = coding.lower()
        if coding == "gzip":
            return q > 0
        if coding == "*":
            verdict = q > 0
    return bool(verdict)


def metrics_response(
    collectors: Sequence[Collector],
    gzip: PartsGzip,
    *,
    accept: str | None,
    accept_encoding: str | None,
    query: str,
) -> tuple[list[tuple[str, str]], list[bytes]] | None:
    """Headers and body parts of a ``/metrics`` answer: the format prometheus_client would
    negotiate for ``accept``, gzip when accepted, ``name[]`` filters applied. ``None`` when only
    prometheus_client's own app can serve it (an escaping scheme other than ``underscores`` or
    ``allow-utf-8``, which would change names we export)."""
    encoder, content_type = choose_encoder(accept or "")
    media, *params = (part.strip() for part in content_type.split(";"))
    escaping = dict(p.split("=", 1) for p in params if "=" in p).get("escaping", "underscores")
    # Our metric and label names are legacy-valid (config.py checks static label names), and
    # for such names these two schemes change nothing; "dots" and "values" would.
    if escaping not in ("underscores", "allow-utf-8"):
        return None
    selected = parse_qs(query).get("name[]")
    body = render(
        collectors,
        encoder,
        openmetrics=media == "application/openmetrics-text",
        names=frozenset(selected) if selected else None,
    )
    headers = [("Content-Type", content_type)]
    if accepts_gzip(accept_encoding):
        body = [gzip.compress(body)]
        headers.append(("Content-Encoding", "gzip"))
    headers.append(("Content-Length", str(sum(map(len, body)))))
    return headers, body


def create_app(
    *,
    collectors: Sequence[Collector],
    telemetry_path: str,
    ready: Callable[[], bool],
    status: Callable[[], str],
    config_text: Callable[[], str],
    reload: Callable[[], tuple[bool, str]] | None = None,
) -> WsgiApp:
    """The exporter's WSGI app. ``collectors`` are exported in that order; ``status`` makes
    the status page (``/``), ``config_text`` the running config with secrets redacted
    (``/config``); ``reload`` re-reads the config for ``POST /-/reload`` and says whether that
    worked."""
    return ExporterApp(collectors, telemetry_path, ready, status, config_text, reload)


Page = tuple[str, str, str, tuple[tuple[str, str], ...]]  # status, body, media type, headers


class ExporterApp:
    """The routes: the metrics, the pages (each a callable giving status, body, media type and
    extra headers) and the reload endpoint."""

    def __init__(
        self,
        collectors: Sequence[Collector],
        telemetry_path: str,
        ready: Callable[[], bool],
        status: Callable[[], str],
        config_text: Callable[[], str],
        reload: Callable[[], tuple[bool, str]] | None,
    ) -> None:
        self._collectors = collectors
        self._telemetry_path = telemetry_path
        self._reload = reload
        registry = CollectorRegistry(auto_describe=False)  # for the rare negotiations only
        for collector in collectors:
            registry.register(collector)
        self._fallback = make_wsgi_app(registry)
        self._gzip = PartsGzip()

        def readiness() -> Page:
            if ready():
                return "200 OK", "Ready\n", "text/plain", ()
            return (
                "503 Service Unavailable",
                "Not ready: first poll cycle running\n",
                "text/plain",
                (),
            )

        self._pages: dict[str, Callable[[], Page]] = {
            "/": lambda: ("200 OK", status(), "text/html", _PAGE_HEADERS),
            "/config": lambda: ("200 OK", config_text(), "text/plain", ()),
            "/-/healthy": lambda: ("200 OK", "Healthy\n", "text/plain", ()),
            "/-/ready": readiness,
        }

    def __call__(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/-/reload" and self._reload is not None:
            if method != "POST":
                return _empty(start, "405 Method Not Allowed", ("Allow", "POST"))
            ok, message = self._reload()
            return _text(start, "200 OK" if ok else "500 Internal Server Error", message + "\n")
        if path != self._telemetry_path and path not in self._pages:
            return _text(start, "404 Not Found", "Not found\n")
        if method not in ("GET", "HEAD"):
            return _empty(start, "405 Method Not Allowed", ("Allow", "GET, HEAD"))
        if path == self._telemetry_path:
            return self._metrics(environ, start)
        return _text(start, *self._pages[path]())

    def _metrics(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        answer = metrics_response(
            self._collectors,
            self._gzip,
            accept=environ.get("HTTP_ACCEPT"),
            accept_encoding=environ.get("HTTP_ACCEPT_ENCODING"),
            query=environ.get("QUERY_STRING", ""),
        )
        if answer is None:
            return self._fallback(environ, start)  # type: ignore[no-any-return]
        headers, parts = answer
        start("200 OK", headers)
        # Parts are sent one after the other, never copied into one body; HEAD gets the
        # headers (Content-Length included) of the same answer.
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else parts


def _text(
    start: StartResponse,
    code: str,
    body: str,
    ctype: str = "text/plain",
    extra: tuple[tuple[str, str], ...] = (),
) -> list[bytes]:
    data = body.encode()
    length = ("Content-Length", str(len(data)))
    start(code, [("Content-Type", f"{ctype}; charset=utf-8"), length, *extra])
    return [data]


def _empty(start: StartResponse, code: str, *headers: tuple[str, str]) -> list[bytes]:
    start(code, [*headers, ("Content-Length", "0")])
    return [b""]


#: The status page needs no script and loads nothing: say so to the browser too.
_PAGE_HEADERS = (("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),)


class CachedPage:
    """A page made at most once per ``seconds`` however many ask for it: a request within that
    gets the page made last, and requests that arrive while it is being made wait for that one
    make instead of each making their own (32 concurrent ``GET /`` at 10,000 meetings made 32
    pages and pushed scrapes to 4 s).

        >>> status = CachedPage(lambda: status_page(...), seconds=1.0)
        >>> status() is status()
        True
    """

    def __init__(
        self,
        make: Callable[[], str],
        *,
        seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make = make
        self._seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()  # held while making: one make at a time
        self._page: str | None = None
        self._made = 0.0

    def __call__(self) -> str:
        with self._lock:
            if self._page is None or not 0 <= self._clock() - self._made < self._seconds:
                self._page = self._make()
                self._made = self._clock()
            return self._page
