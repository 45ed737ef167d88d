"""The hardened HTTP(S) server: one event loop reads requests, a fixed pool of workers answers.

:class:`HttpServer` serves a WSGI app: one event loop thread accepts connections, completes TLS
handshakes and reads request headers without blocking (a slow or silent client costs a socket,
never a thread, and is cut off ``header_timeout`` after it connected; :mod:`exporter.web.conn`);
complete requests go to a fixed pool of wsgiref workers (:mod:`exporter.web.handler`).
Everything it has to say goes through :mod:`logging`.

With a web config (:mod:`exporter.web.security`) the server speaks TLS, asks for basic auth on
every path and adds the configured headers to every answer::

    server, thread = serve(app, "127.0.0.1", 9877, web_config_file="web.yml")
"""

from __future__ import annotations

import contextlib
import logging
import queue
import resource
import selectors
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from exporter.errors import ConfigError
from exporter.logs import SUPPRESSED_LOG_SECONDS, RepeatLog
from exporter.web.conn import Next, Pending, Reading
from exporter.web.handler import Handler, answer, send_quietly
from exporter.web.listen import bind
from exporter.web.security import WebSecurity, protect
from exporter.web.wsgi import WsgiApp

# The logger's name stays that of the module the server came from: log lines are an interface.
log = logging.getLogger("exporter.server")

#: Seconds a client has to complete the TLS handshake and send its request's headers.
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Limits:
    """What one client may hold of the server, and for how long."""

    #: Seconds from accept to the end of the request (headers and body), TLS handshake
    #: included: in total, not per read, so a client trickling a byte a second is cut off all
    #: the same.
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
    #: Seconds a kept-alive connection may wait for its next request (then it is closed; it
    #: costs a socket, no thread, and is the first to go when connections run short).
    idle_timeout: float = 120.0
    #: Requests one connection may carry; the last answer says ``Connection: close``.
    max_requests: int = 100
    #: Bytes of request line and headers (more: 431); Prometheus sends well under 1 KiB.
    max_header_bytes: int = 16384
    #: Bytes of body the event loop reads before the request goes to a worker, within the same
    #: ``header_timeout``. A longer body is not read: the app sees only the head (and refuses
    #: it by its Content-Length), and the connection closes after the answer.
    max_body_bytes: int = 1 << 20
    #: Seconds between the lines that sum up repeated connection problems.
    log_every: float = SUPPRESSED_LOG_SECONDS


_BUSY_ANSWER = answer("503 Service Unavailable", "Too many connections\n")
_TIMEOUT_ANSWER = answer("408 Request Timeout", "Request not complete in time\n")


class HttpServer(WSGIServer):
    """A WSGI server safe to face a hostile network.

    One thread (``serve_forever``) accepts connections on every listening socket and, without
    blocking, completes their TLS handshakes and reads their requests, each within
    ``header_timeout`` of the accept (or of its first byte on a kept-alive connection); a slow
    or silent client costs a socket, never a thread. Complete requests go to a fixed pool of
    worker threads, which run the WSGI app and give HTTP/1.1 connections back to the loop to
    wait, up to ``idle_timeout``, for their next request (at most ``max_requests`` each). At
    most ``max_connections`` are open at once: a new one closes the oldest idle one, else the
    oldest that is still sending its request, or, when every one is being answered, gets a
    503. Problems of clients (failed handshakes, timeouts, bad requests) are logged once per
    kind and then summed up once a minute.
    """

    def __init__(
        self, listeners: Sequence[socket.socket], web: WebSecurity | None, limits: Limits
    ) -> None:
        self.listeners = list(listeners)
        self.address_family = self.listeners[0].family
        self.web = web
        self.limits = limits
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fds = soft if soft != resource.RLIM_INFINITY else limits.max_connections * 2
        self.max_connections = max(1, min(limits.max_connections, fds // 2))
        self.events = RepeatLog(log, what="connection problem(s)", every=limits.log_every)
        self._selector = selectors.DefaultSelector()
        self._reading = Reading(
            self._selector, self.events, limits.max_header_bytes, limits.max_body_bytes
        )
        self._wake, self._waker = socket.socketpair()
        self._waker.setblocking(False)  # a full pipe already means "wake up"
        self._pending: dict[Pending, None] = {}  # in the order accepted, so of deadlines
        self._idle: dict[Pending, None] = {}  # kept alive, in the order they went idle
        self._returned: queue.SimpleQueue[Pending] = queue.SimpleQueue()  # from the workers
        self._busy = 0  # connections handed to the workers and not yet closed
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self.stopping = False
        self._stopped = threading.Event()
        self._workers: list[threading.Thread] = []
        first = self.listeners[0]
        super().__init__(first.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()  # socketserver made one of its own; ours are bound already
        self.socket = first
        host, port = first.getsockname()[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()
        for listener in self.listeners:
            listener.setblocking(False)
        for i in range(limits.workers):
            worker = threading.Thread(target=self._work, name=f"http-worker-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    @property
    def ports(self) -> list[int]:
        """The port of each listening socket, in order."""
        return [int(sock.getsockname()[1]) for sock in self.listeners]

    # -- the event loop ---------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 1.0) -> None:
        """Accept and read requests until :meth:`shutdown`."""
        for listener in self.listeners:
            self._selector.register(listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake, selectors.EVENT_READ)
        try:
            while not self.stopping:
                for key, _ in self._selector.select(self._wait(poll_interval)):
                    if key.data == "listener":
                        self._accept(key.fileobj)  # type: ignore[arg-type]
                    elif key.fileobj is self._wake:
                        self._wake.recv(64)
                        self._take_back()
                    elif key.data in self._idle:
                        self._wake_idle(key.data)
                    elif key.data in self._pending:  # not closed by an earlier event of the batch
                        self._step(key.data)
                self._expire()
                self.events.flush()
        finally:
            for pending in [*self._pending, *self._idle]:
                self._close(pending)
            for listener in self.listeners:
                self._selector.unregister(listener)
            self._selector.unregister(self._wake)
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait until it has; connections being answered finish."""
        self.stopping = True
        send_quietly(self._waker, b"x")
        self._stopped.wait()

    def server_close(self) -> None:
        for listener in self.listeners:
            listener.close()
        for _ in self._workers:
            self._jobs.put(None)
        self._selector.close()
        self._wake.close()
        self._waker.close()

    def _wait(self, poll_interval: float) -> float:
        deadlines = [next(iter(held)).deadline for held in (self._pending, self._idle) if held]
        if not deadlines:
            return poll_interval
        return max(0.0, min(poll_interval, min(deadlines) - time.monotonic()))

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):  # then let the others have their turn
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # out of file descriptors, or the like
                self.events.note("accept failed", "accept failed: %s", err)
                return
            sock.setblocking(False)
            _no_delay(sock)
            if not self._make_room():
                send_quietly(sock, _BUSY_ANSWER)
                sock.close()
                continue
            context = self.web.current().ssl_context if self.web is not None else None
            deadline = time.monotonic() + self.limits.header_timeout
            pending = Pending(sock, address, deadline, context)
            self._pending[pending] = None
            self._selector.register(sock, pending.events, pending)

    def _make_room(self) -> bool:
        """Whether a new connection may stay, after closing the oldest idle or unfinished one
        if needed."""
        if len(self._pending) + len(self._idle) + self._busy < self.max_connections:
            return True
        if self._idle:
            self._close(next(iter(self._idle)))  # it can reconnect when it needs to
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

    def _take_back(self) -> None:
        """Connections the workers answered and kept alive: wait for their next request."""
        while not self._returned.empty():
            pending = self._returned.get()
            pending.sock.setblocking(False)
            if pending.buffered:  # pipelined: the next request is (partly) in
                self._reading_again(pending)
                self._selector.register(pending.sock, pending.events, pending)
                self._step(pending)
            else:
                pending.deadline = time.monotonic() + self.limits.idle_timeout
                self._idle[pending] = None
                self._selector.register(pending.sock, pending.events, pending)

    def _wake_idle(self, pending: Pending) -> None:
        """A kept-alive connection sent something: its request has header_timeout from now."""
        del self._idle[pending]
        self._reading_again(pending)
        self._step(pending)

    def _reading_again(self, pending: Pending) -> None:
        pending.deadline = time.monotonic() + self.limits.header_timeout
        self._pending[pending] = None

    def _expire(self) -> None:
        now = time.monotonic()
        while self._idle and next(iter(self._idle)).deadline <= now:
            self._close(next(iter(self._idle)))  # a quiet end of a kept-alive connection
        while self._pending:
            oldest = next(iter(self._pending))
            if oldest.deadline > now:
                return
            if oldest.stage in ("headers", "body"):
                self.events.note(
                    "request timeout", "no complete request from %s within %gs",
                    oldest.peer, self.limits.header_timeout,
                )  # fmt: skip
                send_quietly(oldest.sock, _TIMEOUT_ANSWER)
            else:
                self.events.note(
                    "TLS handshake timeout", "TLS handshake with %s not done within %gs",
                    oldest.peer, self.limits.header_timeout,
                )  # fmt: skip
            self._close(oldest)

    def _step(self, pending: Pending) -> None:
        """Move a connection on as far as the bytes it sent allow."""
        try:
            self._try_step(pending)
        except Exception:  # a bug: lose this connection, never the loop
            log.exception("error while reading a request from %s", pending.peer)
            if pending in self._pending:
                self._close(pending)

    def _try_step(self, pending: Pending) -> None:
        what = pending.step(self._reading)
        if what is Next.DISPATCH:
            self._dispatch(pending)
        elif what is Next.CLOSE:
            self._close(pending)
        elif what.value != pending.events:
            pending.events = what.value
            self._selector.modify(pending.sock, what.value, pending)

    def _dispatch(self, pending: Pending) -> None:
        self._leave(pending)
        with self._lock:
            self._busy += 1
        self._jobs.put(pending)

    def _leave(self, pending: Pending) -> None:
        if pending in self._pending:
            del self._pending[pending]
        else:
            del self._idle[pending]
        self._selector.unregister(pending.sock)

    def _close(self, pending: Pending) -> None:
        self._leave(pending)
        pending.sock.close()

    # -- the workers ------------------------------------------------------------------------

    def _work(self) -> None:
        while (pending := self._jobs.get()) is not None:
            try:
                kept = _answer(self, pending)
            finally:
                with self._lock:
                    self._busy -= 1
            if kept:
                pending.next_request()
                self._returned.put(pending)
                send_quietly(self._waker, b"r")
            else:
                self.shutdown_request(pending.sock)


def _no_delay(sock: socket.socket) -> None:
    """Send what is written at once (``TCP_NODELAY``, as Go's net/http does): an answer is
    written as its head, then its body part by part, and Nagle's algorithm would hold a small
    last write until the client acknowledged the one before, which a client delays by up to
    40 ms. Not a TCP socket (systemd may hand over a Unix one): nothing to do."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _answer(server: HttpServer, pending: Pending) -> bool:
    """Answer ``pending``'s request in this worker; whether the connection stays open.

    A client that drops or garbles its connection is no bug: no traceback for that.
    """
    sock, address = pending.sock, pending.address
    try:
        sock.settimeout(server.limits.write_timeout)
        may_keep = not pending.close_after and pending.served + 1 < server.limits.max_requests
        handler = Handler(sock, address, server, pending.request, may_keep=may_keep)
    except OSError as err:
        log.debug("connection from %s: %s", address[0], err)
        return False
    except Exception:
        log.exception("error while serving %s", address[0])
        return False
    return handler.keep_alive and not server.stopping


def serve(
    app: WsgiApp,
    host: str,
    port: int,
    *,
    web_config_file: str | None = None,
    basic_auth: bool = True,
    limits: Limits | None = None,
) -> tuple[HttpServer, threading.Thread]:
    """Bind ``host:port`` (raising ``OSError`` if the port is taken) and serve in a daemon
    thread; see :func:`serve_on`. A web config that cannot be used raises
    :class:`ConfigError` before anything is bound."""
    web = web_security(web_config_file)
    listener = bind(host, port, (limits or Limits()).backlog)
    return serve_on(app, [listener], web=web, basic_auth=basic_auth, limits=limits)


def serve_on(
    app: WsgiApp,
    listeners: Sequence[socket.socket],
    *,
    web: WebSecurity | None = None,
    basic_auth: bool = True,
    limits: Limits | None = None,
) -> tuple[HttpServer, threading.Thread]:
    """Serve ``app`` on every listening socket of ``listeners``, in a daemon thread.

    ``web`` (:func:`web_security`) turns on TLS, basic auth (unless ``basic_auth`` is off) and
    extra headers as its file says.
    """
    if web is not None:
        app = protect(app, web, basic_auth=basic_auth)
    server = HttpServer(listeners, web, limits or Limits())
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return server, thread


def web_security(web_config_file: str | None) -> WebSecurity | None:
    """The web config of ``--web.config.file`` (None without one), logged; a file that cannot
    be used raises :class:`ConfigError` naming the flag."""
    if not web_config_file:
        return None
    try:
        web = WebSecurity(web_config_file)
    except ConfigError as err:
        raise ConfigError([f"--web.config.file {web_config_file}: {err}"]) from None
    state = web.state
    log.info(
        "web config %s: TLS %s, basic auth %s",
        web_config_file,
        "on" if state.ssl_context is not None else "off",
        f"on for {len(state.config.basic_auth_users)} user(s)" if state.auth else "off",
    )
    return web
