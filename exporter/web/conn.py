"""A connection the event loop holds until its request is in: TLS handshake, then the head.

:meth:`Pending.step` moves a connection on as far as the bytes it sent allow, without blocking,
and says what the event loop should do next. It never sleeps and never waits: the loop calls it
again when the socket is ready.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
from dataclasses import dataclass
from enum import Enum
from typing import Any

from exporter.logs import RepeatLog
from exporter.web.handler import answer, send_quietly

log = logging.getLogger("exporter.server")

# What Go's net/http answers to plain HTTP on a TLS port; clearer than a reset connection.
PLAIN_HTTP_ANSWER = answer("400 Bad Request", "Client sent an HTTP request to an HTTPS server.\n")
TOO_LARGE_ANSWER = answer("431 Request Header Fields Too Large", "Request headers too large\n")
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


class Pending:
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

    def step(self, reading: Reading) -> Next:
        """Move on as far as the bytes sent allow; what to do next."""
        try:
            return self._advance(reading)
        except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            return Next.READ
        except ssl.SSLWantWriteError:
            return Next.WRITE
        except OSError as err:  # ssl.SSLError, resets
            if self.stage == "headers":
                log.debug("connection from %s: %s", self.peer, err)
            else:
                kind = getattr(err, "reason", None) or type(err).__name__
                reading.events.note(
                    f"TLS handshake failed ({kind})", "TLS handshake with %s failed: %s",
                    self.peer, err,
                )  # fmt: skip
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

    def _read_headers(self, reading: Reading) -> Next:
        while True:  # until the socket has no more (BlockingIOError, SSLWantReadError)
            chunk = self.sock.recv(65536)
            if not chunk:  # the client gave up
                return Next.CLOSE
            start = max(0, len(self.data) - 3)
            self.data += chunk
            if self.data.find(b"\r\n\r\n", start) >= 0 or self.data.find(b"\n\n", start) >= 0:
                return Next.DISPATCH
            if len(self.data) > reading.max_header_bytes:
                reading.events.note(
                    "headers too large", "request headers from %s over %d bytes",
                    self.peer, reading.max_header_bytes,
                )  # fmt: skip
                send_quietly(self.sock, TOO_LARGE_ANSWER)
                return Next.CLOSE
