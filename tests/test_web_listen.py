"""Where and how the real exporter process serves: keep-alive, several listen addresses, and
sockets from systemd (``systemd-socket-activate``), all on loopback."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.support.pki import server_certs
from tests.support.ports import free_port
from tests.support.process import ROOT, Process, running, source_env

pytestmark = pytest.mark.process

ENV = source_env()
EXPORTER = [sys.executable, "-m", "exporter"]


def started(tmp_path: Path, argv: list[str], ready: str) -> AbstractContextManager[Process]:
    """``argv`` running from the source tree, once its log shows ``ready`` (a regex)."""
    log = tmp_path / f"process-{time.monotonic_ns()}.log"
    return running(argv, log, ready, env=ENV, cwd=ROOT)


def read_answer(stream: BinaryIO) -> tuple[bytes, bytes]:
    """One HTTP answer with a Content-Length from ``stream`` (``sock.makefile("rb")``)."""
    lines = []
    while (line := stream.readline(65537)) not in (b"\r\n", b""):
        lines.append(line)
    head = b"".join(lines)
    match = re.search(rb"(?i)\ncontent-length: *(\d+)", head)
    assert match, head
    return head, stream.read(int(match.group(1)))


def get(port: int, path: str = "/-/healthy", timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        head, body = read_answer(sock.makefile("rb"))
        return head.split(b"\r\n")[0] + b" " + body


def test_two_requests_on_one_connection(tmp_path: Path) -> None:
    port = free_port()
    argv = [*EXPORTER, "--demo", "--web.listen-address", f"127.0.0.1:{port}"]
    ready = rf"listening on 127\.0\.0\.1:{port}/metrics"
    with started(tmp_path, argv, ready), socket.create_connection(("127.0.0.1", port), 10) as sock:
        stream = sock.makefile("rb")
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = read_answer(stream)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"Healthy\n"
        assert b"connection: close" not in head.lower()
        local = sock.getsockname()
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = read_answer(stream)
        assert head.startswith(b"HTTP/1.1 200 ") and b"realtimekit_exporter_build_info" in body
        assert sock.getsockname() == local  # the same connection
        # Two pipelined requests, the second asking to close: both answered, then closed.
        sock.sendall(
            b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert read_answer(stream)[1] == b"Healthy\n"
        head, _ = read_answer(stream)
        assert b"connection: close" in head.lower()
        assert stream.read(1) == b""  # the server closed it


def test_an_http_1_0_request_closes(tmp_path: Path) -> None:
    port = free_port()
    argv = [*EXPORTER, "--demo", "--web.listen-address", f"127.0.0.1:{port}"]
    ready = rf"listening on 127\.0\.0\.1:{port}/metrics"
    with started(tmp_path, argv, ready), socket.create_connection(("127.0.0.1", port), 10) as sock:
        stream = sock.makefile("rb")
        sock.sendall(b"GET /-/healthy HTTP/1.0\r\n\r\n")
        assert read_answer(stream)[1] == b"Healthy\n"
        assert stream.read(1) == b""


def test_every_listen_address_serves_the_same(tmp_path: Path) -> None:
    one, two = free_port(), free_port()
    argv = [*EXPORTER, "--demo", "--web.listen-address", f"127.0.0.1:{one}",
            "--web.listen-address", f"127.0.0.1:{two}"]  # fmt: skip
    ready = rf"listening on 127\.0\.0\.1:{one}/metrics, 127\.0\.0\.1:{two}/metrics;"
    with started(tmp_path, argv, ready):
        for port in (one, two):
            assert get(port) == b"HTTP/1.0 200 OK Healthy\n"
            assert b"realtimekit_exporter_build_info" in get(port, "/metrics")


def test_a_taken_address_among_several_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        free = free_port()
        result = subprocess.run(
            [*EXPORTER, "--demo", "--web.listen-address", f"127.0.0.1:{free}",
             "--web.listen-address", f"127.0.0.1:{busy}"],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=ENV,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"realtimekit-exporter: error: cannot listen on 127.0.0.1:{free}, 127.0.0.1:{busy}: "
        "Address already in use"
    ]


def test_systemd_socket_without_systemd_is_one_line() -> None:
    result = subprocess.run(
        [*EXPORTER, "--demo", "--web.systemd-socket"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=ENV,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "realtimekit-exporter: error: --web.systemd-socket: no sockets from systemd "
        "(LISTEN_FDS and LISTEN_PID unset)"
    ]


def test_socket_activation(tmp_path: Path) -> None:
    """``systemd-socket-activate`` listens, starts the exporter on the first connection and
    hands it the socket: that connection and later ones are answered by the exporter."""
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate not installed (apt-get install systemd)")
    port = free_port()
    argv = [activate, "-l", f"127.0.0.1:{port}", *EXPORTER, "--demo", "--web.systemd-socket"]
    with started(tmp_path, argv, rf"Listening on 127\.0\.0\.1:{port}") as process:
        assert get(port, timeout=30) == b"HTTP/1.0 200 OK Healthy\n"  # starts the exporter
        assert re.search(rf"listening on 127\.0\.0\.1:{port}/metrics", process.log())
        assert b"realtimekit_exporter_build_info" in get(port, "/metrics")


def test_keep_alive_over_tls_on_two_addresses(tmp_path: Path) -> None:
    """Both addresses speak TLS from the one web config, and a TLS connection carries several
    requests (one handshake)."""
    ca, pair = server_certs(tmp_path)
    cert, key = pair.cert, pair.key
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    one, two = free_port(), free_port()
    argv = [*EXPORTER, "--demo", "--web.config.file", str(web),
            "--web.listen-address", f"127.0.0.1:{one}", "--web.listen-address", f"127.0.0.1:{two}"]  # fmt: skip
    context = ssl.create_default_context(cafile=str(ca))
    with started(tmp_path, argv, rf"listening on 127\.0\.0\.1:{one}/metrics, "):
        for port in (one, two):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                stream = sock.makefile("rb")
                for path in ("/-/healthy", "/metrics", "/-/healthy"):
                    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    head, body = read_answer(stream)
                    assert head.startswith(b"HTTP/1.1 200 "), head
                assert body == b"Healthy\n"
