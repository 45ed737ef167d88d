"""The worker's side of a connection: wsgiref's request handler, fed the bytes the event loop read.

The event loop (:mod:`exporter.web.server`) has read the whole request already (head and body);
the handler reads it from memory, runs the WSGI app, and logs through :mod:`logging` only, with
no ``Server`` header and no access log.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import ssl
from collections.abc import Iterable
from typing import Any, Protocol
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler

from exporter.logs import RepeatLog
from exporter.web.wsgi import WsgiApp

log = logging.getLogger("exporter.server")  # the name log lines have always had


class Serving(Protocol):
    """What a handler needs of its server."""

    events: RepeatLog
    base_environ: dict[str, Any]

    def get_app(self) -> WsgiApp | None: ...


def answer(status: str, body: str) -> bytes:
    """A complete ``HTTP/1.0`` answer that closes the connection, for the event loop to send."""
    data = body.encode()
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Best effort, never blocking: the connection is closed right after."""
    with contextlib.suppress(OSError):
        sock.send(data)


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


class Handler(WSGIRequestHandler):
    """wsgiref's request handler reading from what the event loop read, logging through
    :mod:`logging` only, and without a ``Server`` header."""

    server_version = "realtimekit-exporter"  # SERVER_SOFTWARE in the environ
    server: Serving  # type: ignore[assignment]

    def __init__(
        self, request: Any, client_address: Any, server: Serving, head: bytes = b""
    ) -> None:
        self._head = head
        super().__init__(request, client_address, server)  # type: ignore[arg-type]

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        # The whole request, as the event loop read it: the app never reads from the socket, so
        # a client cannot hold a worker by sending slowly.
        self.rfile = io.BytesIO(self._head)

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
