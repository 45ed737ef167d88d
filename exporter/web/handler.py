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


#: A first body part up to this size goes out in one write with the answer's head.
_JOINED_WITH_HEAD = 64 * 1024


class _ServerHandler(ServerHandler):
    server_software = ""  # no Server header (wsgiref's names Python's version)
    #: Whether the connection may carry another request after this answer (HTTP/1.1, the
    #: client did not say close, the server's bounds allow it); the answer says which.
    keep = False
    # Set by wsgiref's BaseHandler as it answers (its stubs do not declare them).
    headers: Any
    environ: Any
    bytes_sent: int
    headers_sent: bool

    #: What ``send_headers`` writes, while it writes it; then the head, held for the first write
    #: of the body.
    _head: list[bytes] | None = None
    _held = b""

    def send_headers(self) -> None:
        """wsgiref's, with the head (status line, Date, headers: three writes) held and sent
        with the body's first part: one write, one packet for a small answer."""
        self._head = []
        try:
            super().send_headers()
        finally:
            self._held, self._head = b"".join(self._head), None

    def _write(self, data: bytes) -> None:
        if self._head is not None:
            self._head.append(data)
            return
        if self._held:
            held, self._held = self._held, b""
            if len(data) <= _JOINED_WITH_HEAD:
                data = held + data
            else:
                super()._write(held)
        super()._write(data)

    def finish_content(self) -> None:
        super().finish_content()
        if self._held:  # an answer without a body (HEAD, an empty one): the head alone
            self._write(b"")
            self._flush()

    def cleanup_headers(self) -> None:
        super().cleanup_headers()  # sets Content-Length when the body is one part
        # Without a Content-Length the client can only tell the end of the body by the close.
        self.keep = self.keep and "Content-Length" in self.headers
        if not self.keep and self.http_version == "1.1":
            self.headers["Connection"] = "close"

    def close(self) -> None:
        self.keep = self.keep and self._complete()  # before close() forgets the answer
        super().close()

    def _complete(self) -> bool:
        """Whether all of the answer went out (its Content-Length's worth of body, or HEAD)."""
        if not self.headers_sent or self.headers is None:
            return False
        length = self.headers.get("Content-Length")
        head = self.environ.get("REQUEST_METHOD") == "HEAD"
        return length is not None and (head or self.bytes_sent == int(length))

    def log_exception(self, exc_info: Any) -> None:
        self.keep = False
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
    protocol_version = "HTTP/1.1"  # so that parse_request lets an HTTP/1.1 connection persist
    server: Serving  # type: ignore[assignment]

    def __init__(
        self,
        request: Any,
        client_address: Any,
        server: Serving,
        head: bytes = b"",
        *,
        may_keep: bool = False,
    ) -> None:
        self._head = head
        self._may_keep = may_keep
        #: After the answer: whether the connection may carry the client's next request.
        self.keep_alive = False
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
        if self.request_version == "HTTP/1.1":
            handler.http_version = "1.1"
            handler.keep = self._may_keep and not self.close_connection
        handler.run(self.server.get_app())  # type: ignore[arg-type]
        self.keep_alive = handler.keep

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
