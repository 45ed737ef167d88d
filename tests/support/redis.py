"""A real ``redis-server`` on 127.0.0.1 (the coordination, HA and deploy tests, the failover
benchmark)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.ports import free_port
from tests.support.process import stop_process
from tests.support.tools import require_tool


def redis_server_path() -> str:
    return require_tool("redis-server", hint="apt-get install redis-server")


def local_redis_args(path: str, port: int, tmp: Path) -> list[str]:
    """``redis-server`` on 127.0.0.1:``port`` with its files in ``tmp``."""
    return [path, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp)]


class RedisServer:
    """A redis-server run as ``argv`` (listening on 127.0.0.1:``port``; its output in
    ``tmp/redis.log``) that a test can stop and start again."""

    def __init__(self, argv: Sequence[str], tmp: Path, port: int) -> None:
        self.argv, self.tmp, self.port = list(argv), tmp, port
        self.log = tmp / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def local(cls, path: str, tmp: Path, *extra: str) -> RedisServer:
        """Redis without persistence on a free port (extra flags: ``--requirepass …``)."""
        port = free_port()
        argv = [*local_redis_args(path, port, tmp), "--save", "", "--appendonly", "no", *extra]
        return cls(argv, tmp, port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        """Start it, and wait until it accepts connections."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise AssertionError(
            f"redis-server did not listen on {self.port} within {timeout}s:\n"
            + self.log.read_text(errors="replace")[-3000:]
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
