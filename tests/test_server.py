"""The HTTP server against hostile clients (issue 13, items 6, 8, 9): a real server from
``serve()`` on 127.0.0.1 with a trivial app, and the real exporter process where it matters."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from bench.slowloris import Slowloris
from exporter.logs import RedactingFilter, RepeatLog, setup_logging
from exporter.web.server import HttpServer, Limits, serve
from tests.support.api import TOKEN, sim_config
from tests.support.clock import FakeTime
from tests.support.pki import client_context, tls_config, write_web_config
from tests.support.process import proc_status, wait_for

Server = Callable[..., HttpServer]


def hello(environ: dict[str, Any], start: Any) -> list[bytes]:
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError(f"the app broke while holding {TOKEN}")
    start("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    return [b"hello\n"]


@pytest.fixture
def start_server() -> Iterator[Server]:
    """``start_server(app=hello, web_config_file=None, **limits)``: a server from ``serve()``."""
    started: list[tuple[HttpServer, threading.Thread]] = []

    def start(app: Any = hello, web_config_file: str | None = None, **limits: Any) -> HttpServer:
        pair = serve(app, "127.0.0.1", 0, web_config_file=web_config_file, limits=Limits(**limits))
        started.append(pair)
        return pair[0]

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(5)


def new_threads(before: set[threading.Thread]) -> list[str]:
    """Threads started since ``before``, other than the test's own pools."""
    return [
        t.name
        for t in threading.enumerate()
        if t not in before and not t.name.startswith("ThreadPoolExecutor")
    ]


def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send ``data`` and read until the server closes (or resets) the connection."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def timed_get(url: str, **kw: Any) -> tuple[int, float]:
    started = time.monotonic()
    response = httpx.get(url, timeout=10, **kw)
    return response.status_code, time.monotonic() - started


def under_attack(
    attack: Slowloris, jobs: list[Callable[[], Any]], seconds: float = 30
) -> list[Any]:
    """Run ``jobs`` concurrently while ``attack`` trickles a byte on each connection every
    0.25 s; their results."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
        deadline = time.monotonic() + seconds
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            attack.trickle()
            time.sleep(0.25)
        return [f.result(timeout=1) for f in futures]


# --- item 6: backlog, timeouts, connection bound, banner ---------------------------------------


def test_backlog_holds_200_connects_while_the_server_cannot_accept(simulator, start_exporter):
    exporter = start_exporter(sim_config(simulator))
    exporter.wait_ready()
    socks: list[socket.socket] = []
    slowest = 0.0
    os.kill(exporter.proc.pid, signal.SIGSTOP)  # the kernel alone completes the handshakes
    try:
        for _ in range(200):
            started = time.monotonic()
            try:
                socks.append(socket.create_connection(("127.0.0.1", exporter.port), timeout=2))
            except OSError:
                slowest = float("inf")
                break
            slowest = max(slowest, time.monotonic() - started)
    finally:
        os.kill(exporter.proc.pid, signal.SIGCONT)
        for sock in socks:
            sock.close()
    assert len(socks) == 200
    assert slowest < 0.5, f"a connect took {slowest:.2f}s: the listen backlog is too short"
    assert exporter.get("/-/healthy").status_code == 200


def test_slowloris_is_cut_off_and_never_holds_up_scrapes(start_server):
    server = start_server(header_timeout=1.0, max_connections=256)  # 44 make room
    url = f"http://127.0.0.1:{server.server_port}/"
    before = set(threading.enumerate())
    attack = Slowloris(server.server_port, 300)
    try:
        results = under_attack(attack, [lambda: timed_get(url)] * 20)
        assert new_threads(before) == [], "a thread per connection"
        attack.wait_closed(timeout=5)
        assert attack.alive == 0, f"{attack.alive} slow connections still open"
    finally:
        attack.close()
    assert [status for status, _ in results] == [200] * 20
    assert max(seconds for _, seconds in results) < 3
    assert len(attack.lifetimes) == 300
    assert max(attack.lifetimes) < 1.0 + 1.0, "not closed within the header timeout"


def test_slowloris_against_the_exporter(simulator, start_exporter):
    exporter = start_exporter(sim_config(simulator))
    exporter.wait_ready()
    before = proc_status(exporter.proc.pid, "Threads")
    attack = Slowloris(exporter.port, 300)
    try:
        results = under_attack(attack, [lambda: timed_get(exporter.base + "/metrics")] * 20)
        during = proc_status(exporter.proc.pid, "Threads")
    finally:
        attack.close()
    assert [status for status, _ in results] == [200] * 20
    assert max(seconds for _, seconds in results) < 5
    assert during <= before + 5, f"threads {before} -> {during} under 300 slow connections"
    assert "Traceback" not in exporter.log()


def test_tls_handshake_is_bounded_and_costs_no_thread(start_server, pki, tmp_path):
    web = write_web_config(tmp_path, {"tls_server_config": tls_config(pki)})
    server = start_server(web_config_file=str(web), header_timeout=1.0)
    before = set(threading.enumerate())
    # Half a ClientHello: the record header, then nothing.
    attack = [socket.create_connection(("127.0.0.1", server.server_port)) for _ in range(50)]
    try:
        for sock in attack:
            sock.sendall(b"\x16\x03\x01")
        context = client_context(pki)
        with httpx.Client(verify=context, timeout=10) as client:
            response = client.get(f"https://127.0.0.1:{server.server_port}/")
        assert response.status_code == 200
        assert new_threads(before) == []
        started = time.monotonic()
        for sock in attack:
            sock.settimeout(3)
            assert sock.recv(1) == b"", "the server should close a stalled handshake"
        assert time.monotonic() - started < 2.5
    finally:
        for sock in attack:
            sock.close()


def test_connections_over_the_bound_are_refused_at_once(start_server):
    release = threading.Event()
    entered: list[bool] = []

    def slow(environ: dict[str, Any], start: Any) -> list[bytes]:
        entered.append(True)
        release.wait(10)
        return hello(environ, start)

    server = start_server(slow, max_connections=2, workers=2)
    url = f"http://127.0.0.1:{server.server_port}/"
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(timed_get, url) for _ in range(2)]
        wait_for(lambda: len(entered) == 2, timeout=5)
        try:
            status, seconds = timed_get(url)
        finally:
            release.set()
        assert [f.result(10)[0] for f in held] == [200, 200]
    assert (status, seconds < 1) == (503, True)


def test_oldest_unfinished_connection_makes_room(start_server):
    server = start_server(max_connections=5)
    url = f"http://127.0.0.1:{server.server_port}/"
    attack = Slowloris(server.server_port, 5)
    try:
        # The first request closes the oldest slow one; then there is room again.
        assert [timed_get(url)[0] for _ in range(3)] == [200] * 3
        wait_for(lambda: attack.reap(0.05) >= 1, timeout=3)
        assert (len(attack.lifetimes), attack.alive) == (1, 4)
    finally:
        attack.close()


def test_headers_too_large(start_server):
    server = start_server(max_header_bytes=1000)
    answer = raw_exchange(server.server_port, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 2000)
    assert answer.startswith(b"HTTP/1.0 431 ")


def test_no_server_banner(start_server):
    server = start_server()
    ok = raw_exchange(server.server_port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    many_headers = b"".join(b"X-%d: 1\r\n" % i for i in range(120))
    refused = raw_exchange(server.server_port, b"GET / HTTP/1.1\r\n" + many_headers + b"\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ") and ok.endswith(b"hello\n")
    assert refused.startswith(b"HTTP/1.1 431 ")
    for answer in (ok, refused):
        head = answer.split(b"\r\n\r\n")[0].lower()
        assert b"\r\nserver:" not in head
        assert b"python" not in head and b"wsgiserver" not in head


# --- item 8: everything through logging ---------------------------------------------------------


@pytest.fixture
def logfmt_log() -> Iterator[io.StringIO]:
    """The exporter's own log setup (logfmt, token redacted) writing to a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    setup_logging("debug", "logfmt", stream=stream, redact=RedactingFilter([TOKEN]))
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name in ("httpx", "httpcore", "apscheduler"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_app_errors_and_bad_requests_are_log_lines(start_server, logfmt_log, capfd):
    server = start_server()
    port = server.server_port
    assert httpx.get(f"http://127.0.0.1:{port}/boom", timeout=10).status_code == 500
    raw_exchange(port, f"{TOKEN} /\r\n\r\n".encode())  # a bad method, named in the line
    raw_exchange(port, b"\x00\x01\xff garbage\r\n\r\n")

    def lines() -> list[str]:
        return [line for line in logfmt_log.getvalue().splitlines() if "exporter.server" in line]

    wait_for(lambda: len(lines()) >= 2, timeout=5)
    text = "\n".join(lines())
    assert 'level=error logger=exporter.server msg="error answering GET /boom"' in text
    assert "RuntimeError: the app broke while holding" in text  # the traceback, as exc=
    assert (
        "bad request from 127.0.0.1: code 400, message Bad HTTP/0.9 request type ('<redacted>')"
        in text
    )
    assert all(line.startswith("ts=") for line in logfmt_log.getvalue().splitlines())
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and TOKEN not in out + err


def test_a_token_in_a_traceback_is_redacted(start_server, logfmt_log):
    server = start_server()
    assert httpx.get(f"http://127.0.0.1:{server.server_port}/boom", timeout=10).status_code == 500
    wait_for(lambda: "error answering" in logfmt_log.getvalue(), timeout=5)
    assert "RuntimeError: the app broke while holding <redacted>" in logfmt_log.getvalue()
    assert TOKEN not in logfmt_log.getvalue()


def test_bad_requests_to_the_exporter_are_logfmt_lines(simulator, start_exporter):
    exporter = start_exporter(sim_config(simulator))
    raw_exchange(exporter.port, f"{TOKEN} /\r\n\r\n".encode())
    wait_for(lambda: "bad request from 127.0.0.1" in exporter.log(), timeout=5)
    lines = [line for line in exporter.log().splitlines() if "bad request" in line]
    assert lines[0].startswith("ts=") and "level=info logger=exporter.server" in lines[0]
    assert "<redacted>" in lines[0]
    assert "Traceback" not in exporter.log()  # the fixture checks the token at teardown


# --- item 9: failed TLS handshakes summed up ----------------------------------------------------


def test_failed_tls_handshakes_are_summed_up(start_server, pki, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="exporter.server")
    web = write_web_config(tmp_path, {"tls_server_config": tls_config(pki)})
    server = start_server(web_config_file=str(web), log_every=3.0)
    port = server.server_port
    caplog.clear()  # the startup line
    distrusting = ssl.create_default_context()  # does not know our CA: aborts the handshake
    for _ in range(25):
        raw_exchange(port, b"\x16GET / HTTP/1.1\r\n\r\n")  # not TLS after the first byte
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            distrusting.wrap_socket(raw, server_hostname="127.0.0.1")

    def records() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "exporter.server" and r.levelno >= logging.INFO
        ]

    summary = wait_for(lambda: [m for m in records() if "not logged one by one" in m], timeout=10)
    failures = [m for m in records() if m.startswith("TLS handshake with")]
    assert 1 <= len(failures) <= 2, failures
    assert len(summary) == 1 and len(records()) == len(failures) + 1, records()
    assert summary[0].startswith(f"{50 - len(failures)} more connection problem(s)")
    assert "TLS handshake failed (" in summary[0]
    assert status_ok(port, pki), "a good client still gets in"


def status_ok(port: int, pki: Any) -> bool:
    with httpx.Client(verify=client_context(pki), timeout=10) as client:
        return client.get(f"https://127.0.0.1:{port}/").status_code == 200


def test_repeat_log_window():
    clock = FakeTime()
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.INFO:
                seen.append(record.getMessage())

    logger = logging.getLogger("test.repeat")
    logger.addHandler(Collect())
    logger.setLevel(logging.DEBUG)
    events = RepeatLog(logger, what="problem(s)", every=60, clock=clock)
    for i in range(10):
        events.note("a", "a %d", i)
        events.note("b", "b %d", i)
        clock.now += 1
    assert seen == ["a 0", "b 0"]
    clock.now += 60
    events.flush()
    assert seen[2:] == [
        "18 more problem(s) in the last 70s, not logged one by one (--log.level debug shows all): "
        "a x9, b x9"
    ]
    events.note("a", "a again")
    events.flush()
    assert seen[3:] == ["a again"]


# --- the WSGI app itself, without sockets ---------------------------------------------------------


def _call(app, method: str, path: str, query: str = "") -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, object] = {}

    def start(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(
        app({"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query}, start)
    )
    return str(seen["status"]), seen["headers"], body  # type: ignore[return-value]


def test_the_wsgi_app_routes_without_a_socket():
    from exporter.app import create_app

    reloads: list[int] = []
    ready = [False]

    def reload() -> tuple[bool, str]:
        reloads.append(1)
        return True, "config reloaded"

    app = create_app(
        collectors=[],
        telemetry_path="/metrics",
        ready=lambda: ready[0],
        status=lambda: "<html>status</html>",
        config_text=lambda: "apps: []\n",
        reload=reload,
    )
    assert _call(app, "GET", "/-/ready")[0].startswith("503")
    ready[0] = True
    assert _call(app, "GET", "/-/ready")[0].startswith("200")
    status, headers, body = _call(app, "GET", "/")
    assert status == "200 OK" and headers["Content-Type"].startswith("text/html")
    assert (
        "default-src 'none'" in headers["Content-Security-Policy"]
        and body == b"<html>status</html>"
    )
    assert _call(app, "GET", "/config")[2] == b"apps: []\n"
    assert _call(app, "POST", "/metrics")[0].startswith("405")
    assert _call(app, "GET", "/-/reload")[0].startswith("405") and not reloads
    assert _call(app, "POST", "/-/reload")[2] == b"config reloaded\n" and reloads == [1]
    assert _call(app, "GET", "/nowhere")[0].startswith("404")
    status, headers, body = _call(app, "HEAD", "/metrics")
    get = _call(
        app, "GET", "/metrics"
    )  # no collectors: an empty body, but its headers all the same
    assert (
        status == "200 OK" and body == b"" and headers["Content-Length"] == get[1]["Content-Length"]
    )
