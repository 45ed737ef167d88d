"""The HTTP side: a small WSGI app (landing page, health, readiness, metrics) and its server.

Metrics are rendered by prometheus_client's own WSGI app, so content negotiation (text or
OpenMetrics), gzip and ``name[]`` filtering behave exactly as in every Python exporter.
"""

from __future__ import annotations

import html
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from exporter import __version__
from exporter.errors import ConfigError

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

DEFAULT_PORT = 9877


def parse_listen_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[v6addr]:PORT`` to ``(host, port)``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError([f"--web.listen-address: {value!r} is not HOST:PORT"])
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def create_app(
    *,
    registry: CollectorRegistry,
    telemetry_path: str,
    ready: Callable[[], bool],
    summary: Callable[[], str],
) -> WsgiApp:
    """The exporter's WSGI app. ``summary`` describes what is polled for the landing page."""
    metrics_app = make_wsgi_app(registry)

    def text(
        start: StartResponse, status: str, body: str, ctype: str = "text/plain"
    ) -> list[bytes]:
        data = body.encode()
        start(
            status,
            [("Content-Type", f"{ctype}; charset=utf-8"), ("Content-Length", str(len(data)))],
        )
        return [data]

    def app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        known = {telemetry_path, "/", "/-/healthy", "/-/ready"}
        if path in known and method not in ("GET", "HEAD"):
            start("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
            return [b""]
        if path == telemetry_path:
            body: Iterable[bytes] = metrics_app(environ, start)
            return body
        if path == "/-/healthy":
            return text(start, "200 OK", "Healthy\n")
        if path == "/-/ready":
            if ready():
                return text(start, "200 OK", "Ready\n")
            return text(start, "503 Service Unavailable", "Not ready: first poll cycle running\n")
        if path == "/":
            page = _LANDING.format(
                version=html.escape(__version__),
                path=html.escape(telemetry_path, quote=True),
                summary=html.escape(summary()),
            )
            return text(start, "200 OK", page, "text/html")
        return text(start, "404 Not Found", "Not found\n")

    return app


_LANDING = """<!DOCTYPE html>
<html><head><title>RealtimeKit Exporter</title></head>
<body><h1>RealtimeKit Exporter</h1>
<p>Version {version}. {summary}</p>
<ul><li><a href="{path}">Metrics</a></li>
<li><a href="/-/healthy">Health</a></li><li><a href="/-/ready">Readiness</a></li></ul>
</body></html>
"""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: a line per scrape is noise."""


def serve(app: WsgiApp, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Bind (raising ``OSError`` if the port is taken) and serve in a daemon thread."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("_Server", (_Server,), {"address_family": family})
    server: WSGIServer = make_server(
        host, port, app, server_class=server_class, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return server, thread
