"""A connection the event loop holds until its request is in: TLS handshake, head, then body.

The head must be complete within ``max_header_bytes`` (else 431, however it arrived), hold no NUL
byte, and say the body's length one way only (a duplicate or malformed ``Content-Length``, or one
beside ``Transfer-Encoding``: 400; ``Transfer-Encoding`` alone: 411), so that every request ends
where the server thinks it does. A body of up to ``max_body_bytes`` is read here too, within the
same total deadline as the head: a client dripping its body costs a socket, never a worker.

:meth:`Pending.step` moves a connection on as far as the bytes it sent allow, without blocking,
and says what the event loop should do next. It never sleeps and never waits: the loop calls it
again when the socket is ready.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from exporter.logs import RepeatLog
from exporter.web.handler import answer, send_quietly

log = logging.getLogger("exporter.server")

# What Go's net/http answers to plain HTTP on a TLS port; clearer than a reset connection.
PLAIN_HTTP_ANSWER = answer("400 Bad Request", "Client sent an HTTP request to an HTTPS server.\n")
TOO_LARGE_ANSWER = answer("431 Request Header Fields Too Large", "Request headers too large\n")
_LENGTH_REQUIRED = answer("411 Length Required", "Send the body with a Content-Length\n")
_TLS_HANDSHAKE_RECORD = b"\x16"


class Next(Enum):
    """What the event loop does with a connection after a step."""

    READ = selectors.EVENT_READ  # wait until it is readable
    WRITE = selectors.EVENT_WRITE  # wait until it is writable (a TLS handshake's reply)
    DISPATCH = 0  # the request is in: hand it to a worker
    CLOSE = -1  # done with it: close


@dataclass
class Reading:
    """What a step needs of the server: its selector, where to note problems, and the bounds."""

    selector: selectors.BaseSelector
    events: RepeatLog
    max_header_bytes: int
    max_body_bytes: int


class Pending:
    """A connection the event loop holds until its request headers are in."""

    __slots__ = (
        "address", "close_after", "context", "data", "deadline", "end", "events", "peer",
        "served", "sock", "stage",
    )  # fmt: skip

    def __init__(
        self, sock: socket.socket, address: Any, deadline: float, context: ssl.SSLContext | None
    ) -> None:
        self.sock = sock
        self.address = address
        self.peer = str(address[0])
        self.deadline = deadline
        self.context = context
        self.stage = "tls" if context is not None else "headers"  # "handshake", "headers", "body"
        self.data = bytearray()
        self.end = 0  # where the request ends in data, once its head is in
        self.close_after = False  # the body was not read: the connection cannot carry another
        self.served = 0  # requests answered on this connection so far
        self.events = selectors.EVENT_READ

    def next_request(self) -> None:
        """Ready for the next request of a kept-alive connection (what the client sent after
        this request, pipelined, is its start)."""
        self.data = self.data[self.end :] if self.end else bytearray()
        self.end = 0
        self.stage = "headers"
        self.served += 1
        self.events = selectors.EVENT_READ

    @property
    def buffered(self) -> bool:
        """Whether bytes of the next request are in already (read, or decrypted and waiting)."""
        return bool(self.data) or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0)

    def step(self, reading: Reading) -> Next:
        """Move on as far as the bytes sent allow; what to do next."""
        try:
            return self._advance(reading)
        except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            return Next.READ
        except ssl.SSLWantWriteError:
            return Next.WRITE
        except OSError as err:  # ssl.SSLError, resets
            if self.stage in ("headers", "body"):
                log.debug("connection from %s: %s", self.peer, err)
            else:
                kind = getattr(err, "reason", None) or type(err).__name__
                reading.events.note(
                    f"TLS handshake failed ({kind})", "TLS handshake with %s failed: %s",
                    self.peer, err,
                )  # fmt: skip
                # A TLS 1.3 client sends its request right after its Finished: read it (raw,
                # past the broken TLS layer), so that the close is no reset that destroys the
                # alert (e.g. "certificate required") before the client reads it.
                _drain(self.sock, socket.socket.recv)
            return Next.CLOSE

    def _advance(self, reading: Reading) -> Next:
        if self.stage == "tls":
            first = self.sock.recv(1, socket.MSG_PEEK)
            if first != _TLS_HANDSHAKE_RECORD:
                if first:
                    log.debug("plain HTTP request from %s on the TLS port", self.peer)
                    self.sock.recv(65536)  # so that closing does not reset the connection
                    send_quietly(self.sock, PLAIN_HTTP_ANSWER)
                return Next.CLOSE
            assert self.context is not None
            reading.selector.unregister(self.sock)  # wrapping detaches the plain socket
            self.sock = self.context.wrap_socket(
                self.sock, server_side=True, do_handshake_on_connect=False
            )
            reading.selector.register(self.sock, self.events, self)
            self.stage = "handshake"
        if self.stage == "handshake":
            assert isinstance(self.sock, ssl.SSLSocket)
            self.sock.do_handshake()
            self.stage = "headers"
        return self._read_headers(reading)

    @property
    def request(self) -> bytes:
        """The request as read: head and body (all of it that was read)."""
        return bytes(self.data[: self.end] if self.end else self.data)

    def _read_headers(self, reading: Reading) -> Next:
        if self.data and (verdict := self._examine(reading, 0)) is not None:
            return verdict  # a pipelined request, in already
        while True:  # until the socket has no more (BlockingIOError, SSLWantReadError)
            chunk = self.sock.recv(65536)
            if not chunk:  # the client gave up
                return Next.CLOSE
            start = max(0, len(self.data) - 3)
            self.data += chunk
            if (verdict := self._examine(reading, start)) is not None:
                return verdict

    def _examine(self, reading: Reading, start: int) -> Next | None:
        """What the bytes so far make of the request; None: more are needed."""
        if self.stage == "body":
            return Next.DISPATCH if len(self.data) >= self.end else None
        end = _head_end(self.data, start)
        if end < 0 and len(self.data) <= reading.max_header_bytes:
            return None
        if end < 0 or end > reading.max_header_bytes:
            reading.events.note(
                "headers too large", "request headers from %s over %d bytes",
                self.peer, reading.max_header_bytes,
            )  # fmt: skip
            return self._refuse(TOO_LARGE_ANSWER)
        verdict = self._head_done(reading, end)
        return None if verdict is Next.READ else verdict

    def _head_done(self, reading: Reading, end: int) -> Next:
        """The head is ``data[:end]``: check it, then read the body if it has one."""
        head = bytes(self.data[:end])
        length, problem = _body_length(head)
        if problem:
            reading.events.note("bad request", "bad request from %s: %s", self.peer, problem)
            refusal = _LENGTH_REQUIRED if problem.startswith("Transfer") else _bad(problem)
            return self._refuse(refusal)
        if length > reading.max_body_bytes:
            # The app refuses it by its Content-Length; its body is never read.
            self.end, self.close_after = end, True
            return Next.DISPATCH
        self.end = end + length
        self.stage = "body"
        return Next.DISPATCH if len(self.data) >= self.end else Next.READ

    def _refuse(self, refusal: bytes) -> Next:
        """Answer and close, reading first what the client already sent, so that the close is
        not a reset that could destroy the answer before the client reads it."""
        _drain(self.sock, type(self.sock).recv)
        send_quietly(self.sock, refusal)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        return Next.CLOSE


def _drain(sock: socket.socket, recv: Callable[[Any, int], bytes]) -> None:
    """Read and drop what ``sock`` has received so far (bounded: 1 MiB), never waiting."""
    for _ in range(16):
        try:
            if not recv(sock, 65536):
                return
        except (OSError, ValueError):
            return


def _head_end(data: bytearray, start: int) -> int:
    """Where the head ends in ``data`` (after its blank line), or -1."""
    crlf = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start)
    ends = [i + n for i, n in ((crlf, 4), (lf, 2)) if i >= 0]
    return min(ends) if ends else -1


def _bad(problem: str) -> bytes:
    return answer("400 Bad Request", f"{problem}\n")


def _body_length(head: bytes) -> tuple[int, str]:
    """The body's length from a request head, or a problem that makes the request refused."""
    if b"\0" in head:
        return 0, "NUL byte in the request head"
    lengths: list[bytes] = []
    chunked = False
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        name = name.strip().lower()
        if sep and name == b"content-length":
            lengths.append(value.strip())
        elif sep and name == b"transfer-encoding":
            chunked = True
    if len(lengths) > 1:
        return 0, "more than one Content-Length"
    if lengths and chunked:
        return 0, "Content-Length and Transfer-Encoding together"
    if chunked:
        return 0, "Transfer-Encoding is not supported; send a Content-Length"
    if not lengths:
        return 0, ""
    if not lengths[0].isdigit() or len(lengths[0]) > 18:
        return 0, "malformed Content-Length"
    return int(lengths[0]), ""
