"""The webhook public-key fetch is bounded like every API answer (issue 23 item 3): an endless
body, a gzip bomb and a dripping body leave the key unloaded with a log line naming why, and the
real exporter process's memory flat. The hostile key server runs on loopback; every loop of it is
bounded."""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support.ports import free_port
from tests.support.process import proc_status, wait_for


def _bomb() -> bytes:
    """64 MiB of zeros, gzip-compressed (about 64 KB on the wire)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    chunk = bytes(1 << 20)
    return b"".join(packer.compress(chunk) for _ in range(64)) + packer.flush()


class Hostile(BaseHTTPRequestHandler):
    mode = "endless"
    bomb = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.mode == "bomb":
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(self.bomb)))
            self.end_headers()
            self.wfile.write(self.bomb)
            return
        self.end_headers()
        try:
            if self.mode == "endless":  # 1 GiB at most, far beyond any cap
                for _ in range(1 << 14):
                    self.wfile.write(b" " * (1 << 16))
            else:  # drip: a byte a second, for a minute at most
                for _ in range(60):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(1)
        except OSError:
            return  # the exporter hung up: what it should do

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def key_server(request: pytest.FixtureRequest) -> Iterator[str]:
    mode = request.param
    handler = type(
        "Handler", (Hostile,), {"mode": mode, "bomb": _bomb() if mode == "bomb" else b""}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/webhooks.json"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("key_server", "reason"),
    [
        ("endless", "larger than 65536 bytes"),
        ("bomb", "larger than 65536 bytes"),
        ("drip", "no complete answer within 10s"),
    ],
    indirect=["key_server"],
)
def test_a_hostile_key_document_is_bounded_and_logged(start_exporter, key_server, reason):
    config = {
        "api": {"base_url": "http://127.0.0.1:9/client/v4", "timeout_seconds": 1},
        "webhooks": {"listen_address": f"127.0.0.1:{free_port()}", "public_key_url": key_server},
        "apps": [
            {
                "account_id": "023e105f4ecef8ad9ca31a8372d0c353",
                "app_id": "6f0a8a2c3b8e4f62a1d2c3b4e5f60718",
                "meetings": ["m1"],
                "webhooks": {"enabled": True},
            }
        ],
    }
    exporter = start_exporter(config)
    peak = 0.0

    def logged() -> bool:
        nonlocal peak
        peak = max(peak, proc_status(exporter.proc.pid, "VmRSS") / 2**20)
        line = re.search(r".*webhook public key not loaded.*", exporter.log())
        return line is not None and reason in line.group(0)

    wait_for(logged, timeout=20, interval=0.2)
    assert peak < 200, f"the exporter grew to {peak:.0f} MiB"
    assert "webhook public key loaded" not in exporter.log()
