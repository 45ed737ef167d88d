"""Hostile requests against the real exporter process (``--demo``, loopback only): request heads
over 16 KiB however they arrive, ambiguous body lengths, NUL bytes, and bodies that drip."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.process import demo

pytestmark = pytest.mark.process


@dataclass
class Demo:
    port: int
    hooks: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def demo_until_hooks(tmp_path: Path, *flags: str) -> Iterator[Demo]:
    """``python -m exporter --demo`` on a free loopback port until it and its webhook receiver
    listen."""
    port = free_port()
    log = tmp_path / f"exporter-{port}.log"
    ready = r"webhook receiver serving [\d.]+:(\d+)"
    with demo(log, *flags, port=port, ready=ready) as process:
        yield Demo(port, int(process.wait_for(ready).group(1)), log)


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with demo_until_hooks(tmp_path_factory.mktemp("hostile")) as running:
        yield running


def exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` in one go and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


def status(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    assert match, answer[:200]
    return int(match.group(1))


@pytest.mark.parametrize("size", [17_000, 60_000, 70_000, 200_000])
def test_a_head_over_16_kib_in_one_packet_gets_431(exporter: Demo, size: int) -> None:
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    assert status(exchange(exporter.port, request)) == 431
    # A head under the cap is served as ever.
    assert status(exchange(exporter.port, b"GET /-/healthy HTTP/1.0\r\n\r\n")) == 200


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        (b"Content-Length: 4\r\nContent-Length: 4\r\n", 400),
        (b"Content-Length: 4\r\ncontent-length: 5\r\n", 400),
        (b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", 400),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", 400),
        (b"X-Evil: a\0b\r\nContent-Length: 4\r\n", 400),
        (b"Content-Length: four\r\n", 400),
        (b"Content-Length: -4\r\n", 400),
        (b"Transfer-Encoding: chunked\r\n", 411),
    ],
)
def test_ambiguous_lengths_and_nul_bytes_are_refused(
    exporter: Demo, headers: bytes, code: int
) -> None:
    for port, path in ((exporter.port, b"/-/reload"), (exporter.hooks, b"/webhooks/a/b")):
        request = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\nbody"
        assert status(exchange(port, request)) == code, (port, headers)


def test_malformed_content_length_is_not_logged_per_request(exporter: Demo) -> None:
    before = exporter.log_text().count("malformed Content-Length")
    for _ in range(200):
        request = b"POST /webhooks/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n"
        assert status(exchange(exporter.hooks, request)) == 400
    time.sleep(0.5)  # let the log reach the file (it is written as it happens)
    assert exporter.log_text().count("malformed Content-Length") - before <= 2


def test_slow_bodies_hold_no_worker_and_have_a_total_deadline(exporter: Demo) -> None:
    """Twelve clients announce a body and send one byte of it each second (more clients than
    workers): genuine deliveries are still answered at once, and each slow one is cut off with
    a 408 when its 10 s are up, however steadily it sends."""
    slow = []
    for _ in range(12):
        sock = socket.create_connection(("127.0.0.1", exporter.hooks), timeout=5)
        sock.sendall(b"POST /webhooks/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        slow.append(sock)
    try:
        started = time.monotonic()
        answers: list[bytes] = []
        cut: dict[int, float] = {}
        while len(cut) < len(slow) and time.monotonic() - started < 20:
            for i, sock in enumerate(slow):
                if i not in cut:
                    try:
                        sock.sendall(b"x")
                    except OSError:
                        cut[i] = time.monotonic() - started
            sent = time.monotonic()
            body = b'{"event": "meeting.started"}'
            answer = exchange(
                exporter.hooks,
                b"POST /webhooks/a/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
                timeout=2,
            )
            assert time.monotonic() - sent < 1.0
            answers.append(answer)
            for i, sock in enumerate(slow):
                if i not in cut:
                    sock.settimeout(0.05)
                    with contextlib.suppress(TimeoutError):
                        if sock.recv(65536).startswith(b"HTTP/1.0 408"):
                            cut[i] = time.monotonic() - started
            time.sleep(0.9)
        assert all(status(a) in (401, 404) for a in answers)  # answered (unsigned): not hung
        assert len(cut) == len(slow), cut
        assert max(cut.values()) < 13, cut
    finally:
        for sock in slow:
            sock.close()
