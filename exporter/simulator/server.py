"""The HTTP server under the simulator: stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive, a
lean request parser, streamed and reset answers, and a :class:`Listener` that starts and stops it.
It knows nothing of RealtimeKit: a ``respond`` callable answers each request."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from exporter.simulator.answers import Answer

# (method, request target, header fields by lower-case name, body) → the answer
Respond = Callable[[str, str, dict[str, str], bytes], Answer]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "realtimekit-simulator"
    sys_version = ""
    wbufsize = 1 << 16  # headers and body leave in one send() at flush
    disable_nagle_algorithm = True
    fields: dict[str, str]
    raw_requestline: bytes

    def _backend(self) -> Listener:
        return cast(Server, self.server).backend

    def setup(self) -> None:
        super().setup()
        self._backend().connection(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._backend().connection(self.connection, False)

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
        length = self.fields.get("content-length", "")
        body = self.rfile.read(int(length)) if length.isdigit() else b""
        if "transfer-encoding" in self.fields:
            self.close_connection = True
        self.send_answer(self._backend().respond(self.command, self.path, self.fields, body))

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def send_answer(self, ans: Answer) -> None:
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
            if ans.stream is not None and ans.length is None:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                length = len(ans.body) if ans.stream is None else ans.length
                self.send_header("Content-Length", str(length))
            for name, value in ans.headers:
                self.send_header(name, value)
            self.end_headers()
            if ans.stream is None:
                self.wfile.write(ans.body)
            else:
                self._send_stream(ans.stream, chunked=ans.length is None)
            self.wfile.flush()
        except OSError:  # the client went away (e.g. it timed out first)
            self.close_connection = True

    def _send_stream(self, stream: Iterable[bytes], chunked: bool) -> None:
        """Write each piece as it comes; an answer cut short by stop() closes the connection."""
        self.wfile.flush()
        for piece in stream:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            self.wfile.flush()
        if self._backend().stopping:
            self.close_connection = True
        elif chunked:
            self.wfile.write(b"0\r\n\r\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], backend: Listener) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.backend = backend
        super().__init__(address, Handler)

    def server_bind(self) -> None:  # skip HTTPServer's reverse DNS lookup
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class Listener:
    """Serves ``respond`` on a daemon thread; ``stop`` ends waiting and streaming answers
    (``stop_event``), closes open connections and waits for their threads."""

    def __init__(self, respond: Respond, stop_event: threading.Event) -> None:
        self.respond = respond
        self._stop = stop_event
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a connection closes
        self._conns: set[socket.socket] = set()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        return self._server is not None

    def connection(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)
                self._idle.notify_all()

    def start(self, host: str, port: int) -> None:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._stop.clear()
        self._server = Server((host, port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> bool:
        """Stop serving (waiting up to 5 s for connections); False if it was not serving."""
        server, self._server = self._server, None
        if server is None:
            return False
        self._stop.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._idle.wait_for(lambda: not self._conns, timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
        return True

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return str(self._server.server_address[0]), int(self._server.server_address[1])
