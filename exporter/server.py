"""The HTTP side: a small WSGI app (landing page, health, readiness, metrics) and its server.

The server owns HTTP: it negotiates the format (as prometheus_client does), gzip (honouring
q-values), ``name[]`` filters and ``HEAD``, and hands the collectors to
:func:`exporter.exposition.render` for the body; only escaping schemes that would change our
names fall back to prometheus_client's own WSGI app.

With a web config (:mod:`exporter.webconfig`) the server speaks TLS, asks for basic auth on every
path and adds the configured headers to every answer.

:class:`HttpServer` serves the app: one event loop thread accepts connections, completes TLS
handshakes and reads request headers without blocking (a slow or silent client costs a socket,
never a thread, and is cut off ``header_timeout`` after it connected); complete requests go to a
fixed pool of wsgiref workers. Everything it has to say goes through :mod:`logging`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import resource
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from exporter.config import split_host_port
from exporter.errors import ConfigError
from exporter.exposition import PartsGzip, render
from exporter.logs import SUPPRESSED_LOG_SECONDS, RepeatLog
from exporter.webconfig import WebSecurity

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

DEFAULT_PORT = 9877
#: Seconds a client has to complete the TLS handshake and send its request's headers.
HANDSHAKE_TIMEOUT = 10.0


def parse_listen_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[v6addr]:PORT`` to ``(host, port)``."""
    try:
        return split_host_port(value)
    except ValueError:
        raise ConfigError([f"--web.listen-address: {value!r} is not HOST:PORT"]) from None


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


def protect(app: WsgiApp, web: WebSecurity, *, basic_auth: bool = True) -> WsgiApp:
    """Wrap ``app``: the web config's headers on every answer, and basic auth on every path
    (unless ``basic_auth`` is off: the webhook listener, which RealtimeKit cannot log in to)."""

    def protected(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        state = web.current()
        extra = list(state.config.headers)

        def start_with_headers(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            return start(status, [*headers, *extra], exc_info)

        if (
            basic_auth
            and state.auth is not None
            and not state.auth.check_header(environ.get("HTTP_AUTHORIZATION"))
        ):
            body = b"Unauthorized\n"
            start_with_headers(
                "401 Unauthorized",
                [
                    ("WWW-Authenticate", "Basic"),
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]
        return app(environ, start_with_headers)

    return protected


# --- the HTTP server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one client may hold of the server, and for how long."""

    #: Seconds from accept to the end of the request's headers, TLS handshake included: in
    #: total, not per read, so a client trickling a byte a second is cut off all the same.
    header_timeout: float = HANDSHAKE_TIMEOUT
    #: Seconds a worker may block writing one part of an answer to a client that stopped reading.
    write_timeout: float = 10.0
    #: Connections open at once, from accept to the last byte sent (at most half the process's
    #: file descriptors). When full, the oldest one still sending its request makes room. One
    #: waiting for its headers costs a socket and its bytes so far, no thread: the bound is
    #: high, so that an attacker's churn rarely reaches a scrape still on its way.
    max_connections: int = 1024
    #: Threads that answer complete requests.
    workers: int = 8
    #: The listen backlog.
    backlog: int = 1024
    #: Bytes of request line and headers (more: 431); Prometheus sends well under 1 KiB.
    max_header_bytes: int = 16384
    #: Seconds between the lines that sum up repeated connection problems.
    log_every: float = SUPPRESSED_LOG_SECONDS


def _answer(status: str, body: str) -> bytes:
    data = body.encode()
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


# What Go's net/http answers to plain HTTP on a TLS port; clearer than a reset connection.
_PLAIN_HTTP_ANSWER = _answer("400 Bad Request", "Client sent an HTTP request to an HTTPS server.\n")
_BUSY_ANSWER = _answer("503 Service Unavailable", "Too many connections\n")
_TIMEOUT_ANSWER = _answer("408 Request Timeout", "Request not complete in time\n")
_TOO_LARGE_ANSWER = _answer("431 Request Header Fields Too Large", "Request headers too large\n")
_TLS_HANDSHAKE_RECORD = b"\x16"


class _Pending:
    """A connection the event loop holds until its request headers are in."""

    __slots__ = ("address", "context", "data", "deadline", "events", "peer", "sock", "stage")

    def __init__(
        self, sock: socket.socket, address: Any, deadline: float, context: ssl.SSLContext | None
    ) -> None:
        self.sock = sock
        self.address = address
        self.peer = str(address[0])
        self.deadline = deadline
        self.context = context
        self.stage = "tls" if context is not None else "headers"  # then "handshake", "headers"
        self.data = bytearray()
        self.events = selectors.EVENT_READ


class HttpServer(WSGIServer):
    """A WSGI server safe to face a hostile network.

    One thread (``serve_forever``) accepts connections and, without blocking, completes their
    TLS handshakes and reads their request headers, each within ``header_timeout`` of the
    accept; a slow or silent client costs a socket, never a thread. Complete requests go to a
    fixed pool of worker threads, which run the WSGI app (one request per connection, as
    wsgiref does). At most ``max_connections`` are open at once: a new one closes the oldest
    that is still sending its request, or, when every one is being answered, gets a 503.
    Problems of clients (failed handshakes, timeouts, bad requests) are logged once per kind
    and then summed up once a minute.
    """

    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], family: int, web: WebSecurity | None, limits: Limits
    ) -> None:
        self.address_family = family
        self.request_queue_size = limits.backlog
        self.web = web
        self.limits = limits
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fds = soft if soft != resource.RLIM_INFINITY else limits.max_connections * 2
        self.max_connections = max(1, min(limits.max_connections, fds // 2))
        self.events = RepeatLog(log, what="connection problem(s)", every=limits.log_every)
        self._selector = selectors.DefaultSelector()
        self._wake, self._waker = socket.socketpair()
        self._pending: dict[_Pending, None] = {}  # in the order accepted, so of deadlines
        self._busy = 0  # connections handed to the workers and not yet closed
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[socket.socket, Any, bytes] | None]
        self._jobs = queue.SimpleQueue()
        self._stopping = False
        self._stopped = threading.Event()
        self._workers: list[threading.Thread] = []
        super().__init__(address, _Handler)  # binds; on failure calls server_close and raises
        self.socket.setblocking(False)
        for i in range(limits.workers):
            worker = threading.Thread(target=self._work, name=f"http-worker-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    # -- the event loop ---------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 1.0) -> None:
        """Accept and read requests until :meth:`shutdown`."""
        self._selector.register(self.socket, selectors.EVENT_READ)
        self._selector.register(self._wake, selectors.EVENT_READ)
        try:
            while not self._stopping:
                for key, _ in self._selector.select(self._wait(poll_interval)):
                    if key.fileobj is self.socket:
                        self._accept()
                    elif key.fileobj is self._wake:
                        self._wake.recv(64)
                    elif key.data in self._pending:  # not closed by an earlier event of the batch
                        self._step(key.data)
                self._expire()
                self.events.flush()
        finally:
            for pending in list(self._pending):
                self._close(pending)
            self._selector.unregister(self.socket)
            self._selector.unregister(self._wake)
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait until it has; connections being answered finish."""
        self._stopping = True
        self._waker.send(b"x")
        self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()
        for _ in self._workers:
            self._jobs.put(None)
        self._selector.close()
        self._wake.close()
        self._waker.close()

    def _wait(self, poll_interval: float) -> float:
        if not self._pending:
            return poll_interval
        oldest = next(iter(self._pending))
        return max(0.0, min(poll_interval, oldest.deadline - time.monotonic()))

    def _accept(self) -> None:
        for _ in range(64):  # then let the others have their turn
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # out of file descriptors, or the like
                self.events.note("accept failed", "accept failed: %s", err)
                return
            sock.setblocking(False)
            if not self._make_room():
                _send_quietly(sock, _BUSY_ANSWER)
                sock.close()
                continue
            context = self.web.current().ssl_context if self.web is not None else None
            deadline = time.monotonic() + self.limits.header_timeout
            pending = _Pending(sock, address, deadline, context)
            self._pending[pending] = None
            self._selector.register(sock, pending.events, pending)

    def _make_room(self) -> bool:
        """Whether a new connection may stay, after closing the oldest unfinished one if needed."""
        if len(self._pending) + self._busy < self.max_connections:
            return True
        if not self._pending:
            self.events.note(
                "busy", "%d connections being answered: new connection refused", self._busy
            )
            return False
        oldest = next(iter(self._pending))
        self.events.note(
            "connection limit",
            "%d connections open: closed the oldest unfinished one, from %s",
            self.max_connections, oldest.peer,
        )  # fmt: skip
        self._close(oldest)
        return True

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending:
            oldest = next(iter(self._pending))
            if oldest.deadline > now:
                return
            if oldest.stage == "headers":
                self.events.note(
                    "request timeout", "no complete request from %s within %gs",
                    oldest.peer, self.limits.header_timeout,
                )  # fmt: skip
                _send_quietly(oldest.sock, _TIMEOUT_ANSWER)
            else:
                self.events.note(
                    "TLS handshake timeout", "TLS handshake with %s not done within %gs",
                    oldest.peer, self.limits.header_timeout,
                )  # fmt: skip
            self._close(oldest)

    def _step(self, pending: _Pending) -> None:
        """Move a connection on as far as the bytes it sent allow."""
        try:
            self._try_step(pending)
        except Exception:  # a bug: lose this connection, never the loop
            log.exception("error while reading a request from %s", pending.peer)
            if pending in self._pending:
                self._close(pending)

    def _try_step(self, pending: _Pending) -> None:
        try:
            wanted = self._advance(pending)
        except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            wanted = selectors.EVENT_READ
        except ssl.SSLWantWriteError:
            wanted = selectors.EVENT_WRITE
        except OSError as err:  # ssl.SSLError, resets
            if pending.stage == "headers":
                log.debug("connection from %s: %s", pending.peer, err)
            else:
                kind = getattr(err, "reason", None) or type(err).__name__
                self.events.note(
                    f"TLS handshake failed ({kind})", "TLS handshake with %s failed: %s",
                    pending.peer, err,
                )  # fmt: skip
            self._close(pending)
            return
        if wanted is not None and wanted != pending.events:
            pending.events = wanted
            self._selector.modify(pending.sock, wanted, pending)

    def _advance(self, pending: _Pending) -> int | None:
        """The events to wait for next, or None once the connection left the loop."""
        if pending.stage == "tls":
            first = pending.sock.recv(1, socket.MSG_PEEK)
            if first != _TLS_HANDSHAKE_RECORD:
                if first:
                    log.debug("plain HTTP request from %s on the TLS port", pending.peer)
                    pending.sock.recv(65536)  # so that closing does not reset the connection
                    _send_quietly(pending.sock, _PLAIN_HTTP_ANSWER)
                self._close(pending)
                return None
            assert pending.context is not None
            self._selector.unregister(pending.sock)  # wrapping detaches the plain socket
            pending.sock = pending.context.wrap_socket(
                pending.sock, server_side=True, do_handshake_on_connect=False
            )
            self._selector.register(pending.sock, pending.events, pending)
            pending.stage = "handshake"
        if pending.stage == "handshake":
            assert isinstance(pending.sock, ssl.SSLSocket)
            pending.sock.do_handshake()
            pending.stage = "headers"
        return self._read_headers(pending)

    def _read_headers(self, pending: _Pending) -> int | None:
        while True:  # until the socket has no more (BlockingIOError, SSLWantReadError)
            chunk = pending.sock.recv(65536)
            if not chunk:  # the client gave up
                self._close(pending)
                return None
            start = max(0, len(pending.data) - 3)
            pending.data += chunk
            if pending.data.find(b"\r\n\r\n", start) >= 0 or pending.data.find(b"\n\n", start) >= 0:
                self._dispatch(pending)
                return None
            if len(pending.data) > self.limits.max_header_bytes:
                self.events.note(
                    "headers too large", "request headers from %s over %d bytes",
                    pending.peer, self.limits.max_header_bytes,
                )  # fmt: skip
                _send_quietly(pending.sock, _TOO_LARGE_ANSWER)
                self._close(pending)
                return None

    def _dispatch(self, pending: _Pending) -> None:
        self._leave(pending)
        with self._lock:
            self._busy += 1
        self._jobs.put((pending.sock, pending.address, bytes(pending.data)))

    def _leave(self, pending: _Pending) -> None:
        del self._pending[pending]
        self._selector.unregister(pending.sock)

    def _close(self, pending: _Pending) -> None:
        self._leave(pending)
        pending.sock.close()

    # -- the workers ------------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            sock, address, head = job
            try:
                sock.settimeout(self.limits.write_timeout)
                _Handler(sock, address, self, head)
            except Exception:
                self.handle_error(sock, address)
            finally:
                self.shutdown_request(sock)
                with self._lock:
                    self._busy -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops or garbles its connection is no bug: no traceback for that."""
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            log.debug("connection from %s: %s", client_address[0], err)
        else:
            log.exception("error while serving %s", client_address[0])


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Best effort, never blocking: the connection is closed right after."""
    with contextlib.suppress(OSError):
        sock.send(data)


class _Prefixed(io.RawIOBase):
    """A connection's input with the bytes the event loop already read put back in front."""

    def __init__(self, head: bytes, rest: io.RawIOBase) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        if not self._head:
            return self._rest.readinto(buffer)
        n = min(len(buffer), len(self._head))
        buffer[:n] = self._head[:n]
        self._head = self._head[n:]
        return n

    def close(self) -> None:
        self._rest.close()
        super().close()


class _LogStream:
    """``wsgi.errors``: what an app writes there becomes log lines."""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                log.error("%s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


class _ServerHandler(ServerHandler):
    server_software = ""  # no Server header (wsgiref's names Python's version)

    def log_exception(self, exc_info: Any) -> None:
        environ = getattr(self, "environ", None) or {}
        log.error(
            "error answering %s %s",
            environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
            exc_info=exc_info,
        )  # fmt: skip


class _Handler(WSGIRequestHandler):
    """wsgiref's request handler reading from what the event loop read, logging through
    :mod:`logging` only, and without a ``Server`` header."""

    server_version = "realtimekit-exporter"  # SERVER_SOFTWARE in the environ
    rbufsize = 0  # a raw reader, which _Prefixed wraps
    server: HttpServer

    def __init__(
        self, request: Any, client_address: Any, server: HttpServer, head: bytes = b""
    ) -> None:
        self._head = head
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BufferedReader(_Prefixed(self._head, self.rfile))  # type: ignore[arg-type]

    def handle(self) -> None:
        """One request, as wsgiref's ``handle`` but with our ``ServerHandler``."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return  # an error answer was sent
        rfile: Any = self.rfile
        wfile: Any = self.wfile
        handler = _ServerHandler(
            rfile, wfile, self.get_stderr(), self.get_environ(), multithread=True
        )
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.server.get_app())  # type: ignore[arg-type]

    def send_response(self, code: int, message: str | None = None) -> None:
        """http.server's, without the ``Server`` header."""
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        if isinstance(self.connection, ssl.SSLSocket):
            environ["HTTPS"] = "on"  # so wsgi.url_scheme is https
        return environ

    def get_stderr(self) -> Any:
        return _LogStream()

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: a line per scrape is noise."""

    def log_error(self, format: str, *args: Any) -> None:
        self.server.events.note(
            "bad request", "bad request from %s: %s", self.client_address[0], format % args
        )


def serve(
    app: WsgiApp,
    host: str,
    port: int,
    *,
    web_config_file: str | None = None,
    basic_auth: bool = True,
    limits: Limits | None = None,
) -> tuple[HttpServer, threading.Thread]:
    """Bind (raising ``OSError`` if the port is taken) and serve in a daemon thread.

    ``web_config_file`` turns on TLS, basic auth (unless ``basic_auth`` is off) and extra
    headers as it says; a file that cannot be used raises :class:`ConfigError` before anything
    is bound.
    """
    web: WebSecurity | None = None
    if web_config_file:
        try:
            web = WebSecurity(web_config_file)
        except ConfigError as err:
            raise ConfigError([f"--web.config.file {web_config_file}: {err}"]) from None
        app = protect(app, web, basic_auth=basic_auth)
        state = web.state
        log.info(
            "web config %s: TLS %s, basic auth %s",
            web_config_file,
            "on" if state.ssl_context is not None else "off",
            f"on for {len(state.config.basic_auth_users)} user(s)" if state.auth else "off",
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = HttpServer((host, port), family, web, limits or Limits())
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return server, thread
