"""Where and how the real exporter process serves: keep-alive, several listen addresses, and
sockets from systemd (``systemd-socket-activate``), all on loopback."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
EXPORTER = [sys.executable, "-m", "exporter"]


@contextlib.contextmanager
def running(tmp_path: Path, argv: list[str], ready: str) -> Iterator[Path]:
    """Run ``argv`` until its log shows ``ready`` (a regex); yields the log file."""
    log = tmp_path / f"process-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=ENV)
        try:
            deadline = time.monotonic() + 30
            while not re.search(ready, log.read_text(errors="replace")):
                assert proc.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.1)
            yield log
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


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
    with running(tmp_path, argv, ready), socket.create_connection(("127.0.0.1", port), 10) as sock:
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
    with running(tmp_path, argv, ready), socket.create_connection(("127.0.0.1", port), 10) as sock:
        stream = sock.makefile("rb")
        sock.sendall(b"GET /-/healthy HTTP/1.0\r\n\r\n")
        assert read_answer(stream)[1] == b"Healthy\n"
        assert stream.read(1) == b""


def test_every_listen_address_serves_the_same(tmp_path: Path) -> None:
    one, two = free_port(), free_port()
    argv = [*EXPORTER, "--demo", "--web.listen-address", f"127.0.0.1:{one}",
            "--web.listen-address", f"127.0.0.1:{two}"]  # fmt: skip
    ready = rf"listening on 127\.0\.0\.1:{one}/metrics, 127\.0\.0\.1:{two}/metrics;"
    with running(tmp_path, argv, ready):
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
    with running(tmp_path, argv, rf"Listening on 127\.0\.0\.1:{port}") as log:
        assert get(port, timeout=30) == b"HTTP/1.0 200 OK Healthy\n"  # starts the exporter
        assert re.search(rf"listening on 127\.0\.0\.1:{port}/metrics", log.read_text())
        assert b"realtimekit_exporter_build_info" in get(port, "/metrics")


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (cert file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "tls.crt", folder / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_keep_alive_over_tls_on_two_addresses(tmp_path: Path) -> None:
    """Both addresses speak TLS from the one web config, and a TLS connection carries several
    requests (one handshake)."""
    cert, key = self_signed(tmp_path)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    one, two = free_port(), free_port()
    argv = [*EXPORTER, "--demo", "--web.config.file", str(web),
            "--web.listen-address", f"127.0.0.1:{one}", "--web.listen-address", f"127.0.0.1:{two}"]  # fmt: skip
    context = ssl.create_default_context(cafile=str(cert))
    with running(tmp_path, argv, rf"listening on 127\.0\.0\.1:{one}/metrics, "):
        for port in (one, two):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                stream = sock.makefile("rb")
                for path in ("/-/healthy", "/metrics", "/-/healthy"):
                    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    head, body = read_answer(stream)
                    assert head.startswith(b"HTTP/1.1 200 "), head
                assert body == b"Healthy\n"
