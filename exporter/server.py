"""The HTTP side: a small WSGI app (landing page, health, readiness, metrics) and its server.

The server owns HTTP: it negotiates the format (as prometheus_client does), gzip (honouring
q-values), ``name[]`` filters and ``HEAD``, and hands the collectors to
:func:`exporter.exposition.render` for the body; only escaping schemes that would change our
names fall back to prometheus_client's own WSGI app.

With a web config (:mod:`exporter.webconfig`) the server speaks TLS, asks for basic auth on every
path and adds the configured headers to every answer. The TLS handshake runs in the connection's
worker thread with a timeout, so a slow or silent client never holds up the accept loop.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from exporter.errors import ConfigError
from exporter.exposition import PartsGzip, render
from exporter.webconfig import WebSecurity

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

DEFAULT_PORT = 9877
#: Seconds a client has to complete the TLS handshake.
HANDSHAKE_TIMEOUT = 10.0


def parse_listen_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[v6addr]:PORT`` to ``(host, port)``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError([f"--web.listen-address: {value!r} is not HOST:PORT"])
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


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
    registry = CollectorRegistry(auto_describe=False)  # for the rare negotiations only
    for collector in collectors:
        registry.register(collector)
    fallback = make_wsgi_app(registry)
    gzip = PartsGzip()

    def text(
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

    def metrics(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        answer = metrics_response(
            collectors,
            gzip,
            accept=environ.get("HTTP_ACCEPT"),
            accept_encoding=environ.get("HTTP_ACCEPT_ENCODING"),
            query=environ.get("QUERY_STRING", ""),
        )
        if answer is None:
            return fallback(environ, start)  # type: ignore[no-any-return]
        headers, parts = answer
        start("200 OK", headers)
        # Parts are sent one after the other, never copied into one body; HEAD gets the
        # headers (Content-Length included) of the same answer.
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else parts

    def app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/-/reload" and reload is not None:
            if method != "POST":
                start("405 Method Not Allowed", [("Allow", "POST"), ("Content-Length", "0")])
                return [b""]
            ok, message = reload()
            return text(start, "200 OK" if ok else "500 Internal Server Error", message + "\n")
        known = {telemetry_path, "/", "/config", "/-/healthy", "/-/ready"}
        if path in known and method not in ("GET", "HEAD"):
            start("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
            return [b""]
        if path == telemetry_path:
            return metrics(environ, start)
        if path == "/-/healthy":
            return text(start, "200 OK", "Healthy\n")
        if path == "/-/ready":
            if ready():
                return text(start, "200 OK", "Ready\n")
            return text(start, "503 Service Unavailable", "Not ready: first poll cycle running\n")
        if path == "/":
            return text(start, "200 OK", status(), "text/html", _PAGE_HEADERS)
        if path == "/config":
            return text(start, "200 OK", config_text())
        return text(start, "404 Not Found", "Not found\n")

    return app


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


# What Go's net/http answers to plain HTTP on a TLS port; clearer than a reset connection.
_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)
_TLS_HANDSHAKE_RECORD = b"\x16"


def _tls_accept(
    sock: socket.socket, context: ssl.SSLContext, timeout: float, peer: str
) -> ssl.SSLSocket | None:
    """Complete the TLS handshake on an accepted socket; None (and a log line) if it fails."""
    sock.settimeout(timeout)
    try:
        first = sock.recv(1, socket.MSG_PEEK)
        if not first:
            return None
        if first != _TLS_HANDSHAKE_RECORD:
            sock.recv(65536)  # read the request, so that closing does not reset the connection
            sock.sendall(_PLAIN_HTTP_ANSWER)
            log.debug("plain HTTP request from %s on the TLS port", peer)
            return None
        conn = context.wrap_socket(sock, server_side=True)
    except OSError as err:  # ssl.SSLError, timeouts and resets alike
        log.info("TLS handshake with %s failed: %s", peer, err)
        return None
    conn.settimeout(None)
    return conn


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handler: type[WSGIRequestHandler], web: WebSecurity | None
    ) -> None:
        self.web = web
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's worker thread: TLS handshake first when TLS is on."""
        context = self.web.current().ssl_context if self.web is not None else None
        if context is None:
            super().finish_request(request, client_address)
            return
        conn = _tls_accept(request, context, HANDSHAKE_TIMEOUT, str(client_address[0]))
        if conn is None:
            return  # process_request_thread closes the plain socket
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()  # the plain socket was detached into conn; closing it is ours to do

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops or garbles its connection is no bug: no traceback for that."""
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            log.debug("connection from %s: %s", client_address[0], err)
        else:
            log.exception("error while serving %s", client_address[0])


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: a line per scrape is noise."""

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        if isinstance(self.connection, ssl.SSLSocket):
            environ["HTTPS"] = "on"  # so wsgi.url_scheme is https
        return environ


def serve(
    app: WsgiApp,
    host: str,
    port: int,
    *,
    web_config_file: str | None = None,
    basic_auth: bool = True,
) -> tuple[WSGIServer, threading.Thread]:
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

    class Server(_Server):
        address_family = family

    server = Server((host, port), _QuietHandler, web)
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return server, thread
