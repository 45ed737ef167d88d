"""Child processes: any command with its output in a log file (``Process``, ``running``), the
real exporter (``ExporterProcess``, which the benchmarks start too), and ``wait_for``."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.api import TOKEN
from tests.support.metrics import Samples, parse_metrics

#: The source tree: child processes run it with ``source_env()`` from here.
ROOT = Path(__file__).resolve().parent.parent.parent


#: An opener that ignores any proxy of the environment (loopback requests of the tests).
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_ok(url: str, timeout: float = 2) -> bool:
    """Whether ``url`` answers 200 now (an error or no answer: False)."""
    try:
        with NO_PROXY.open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def source_env(**extra: str) -> dict[str, str]:
    """A child's environment: this PATH, the source tree on PYTHONPATH, and ``extra``."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **extra}


def wait_for(
    check: Callable[[], Any],
    timeout: float = 15,
    interval: float = 0.1,
    *,
    what: str = "condition",
    process: Process | None = None,
) -> Any:
    """Call ``check`` until it returns a truthy value (an AssertionError counts as not yet);
    bounded in time. With ``process``, fail as soon as it exits, and show its log."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except AssertionError as err:
            last = err
        if process is not None and process.proc.poll() is not None:
            raise AssertionError(
                f"process exited ({process.proc.returncode}) while waiting for {what}\n"
                + process.log()[-3000:]
            )
        time.sleep(interval)
    tail = "" if process is None else "\n" + process.log()[-3000:]
    raise AssertionError(f"{what} not met within {timeout}s: {last}{tail}")


def wait_ok(url: str, process: Process, timeout: float = 30) -> None:
    """Until ``url`` answers 200 (a ``/-/ready`` or ``/-/healthy``); fails as soon as
    ``process`` exits, showing its log."""
    wait_for(lambda: http_ok(url), timeout, 0.2, what=f"a 200 from {url}", process=process)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class Process:
    """A child process whose output (stdout and stderr) goes to the file ``log_path``."""

    def __init__(
        self,
        argv: Sequence[str | Path],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.argv = [str(a) for a in argv]
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, env=env
        )
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first match of ``pattern`` in the log, once there; fails if the process exits
        or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log())
            if match:
                return match
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv} exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 10) -> int:
        code = stop_process(self.proc, timeout)
        self._log.close()
        return code


@contextlib.contextmanager
def running(
    argv: Sequence[str | Path],
    log: Path,
    ready: str | None = None,
    *,
    timeout: float = 30,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[Process]:
    """``argv`` running, once its log matches ``ready`` (a regex); stopped on the way out."""
    process = Process(argv, log, env=env, cwd=cwd)
    try:
        if ready is not None:
            process.wait_for(ready, timeout)
        yield process
    finally:
        process.stop()


def demo(
    log: Path, *flags: str, port: int = 0, ready: str | None = None, timeout: float = 30
) -> contextlib.AbstractContextManager[Process]:
    """``python -m exporter --demo`` on 127.0.0.1:``port``, once its log matches ``ready``
    (default: it listens on ``port``)."""
    argv = [sys.executable, "-m", "exporter", "--demo", "--web.listen-address", f"127.0.0.1:{port}"]
    ready = ready or rf"listening on 127\.0\.0\.1:{port}"
    return running([*argv, *flags], log, ready, timeout=timeout, env=source_env(), cwd=ROOT)


def listening_port(pid: int, exclude: Sequence[int] = ()) -> int | None:
    """A TCP port (IPv4) that process ``pid`` listens on, not one of ``exclude``; from
    /proc/PID/net/tcp and its fds."""
    try:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            port = int(fields[1].split(":")[1], 16)
            if fields[3] == "0A" and fields[9] in inodes and port not in exclude:  # LISTEN
                return port
    except OSError:
        return None
    return None


def proc_status(pid: int, field: str) -> int:
    """A number of ``/proc/PID/status``: ``Threads``, or a memory figure (``VmRSS``, ``VmHWM``:
    the peak) in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+)( kB)?$", text, re.MULTILINE)
    assert match, f"{field} not in /proc/{pid}/status"
    return int(match.group(1)) * (1024 if match.group(2) else 1)


def exporter_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m exporter``."""
    script = Path(sys.executable).parent / "realtimekit-exporter"
    return [str(script)] if script.exists() else [sys.executable, "-m", "exporter"]


class ExporterProcess(Process):
    """A real ``python -m exporter`` on 127.0.0.1 with an ephemeral port, its config written to
    ``tmp/config.yaml`` and its log to ``tmp/exporter.log``.

    ``root``: the source tree to run (on PYTHONPATH, the working directory), else this
    interpreter's package. At ``log_level`` debug or info the port is read from the log's
    "listening on" line; above (the benchmarks': logging costs CPU) from /proc."""

    def __init__(
        self,
        config: dict[str, Any],
        tmp: Path,
        *args: str,
        env: dict[str, str] | None = None,
        root: Path | None = None,
        log_level: str = "debug",
        timeout: float = 20,
    ) -> None:
        self.config = config
        self.config_path = tmp / "config.yaml"
        self.write_config(config)
        full_env = {"PATH": "/usr/bin:/bin", "CLOUDFLARE_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
        if root is not None:
            full_env["PYTHONPATH"] = str(root)
        full_env.update(env or {})
        argv = [
            sys.executable, "-m", "exporter", "--config.file", str(self.config_path),
            "--web.listen-address", "127.0.0.1:0", "--log.level", log_level, *args,
        ]  # fmt: skip
        super().__init__(argv, tmp / "exporter.log", env=full_env, cwd=root)
        if log_level in ("debug", "info"):
            self.port = int(self.wait_for(r"listening on 127\.0\.0\.1:(\d+)", timeout).group(1))
        else:
            self.port = self._find_port(timeout)
        self.base = f"http://127.0.0.1:{self.port}"

    def _find_port(self, timeout: float) -> int:
        """The port it listens on that is not its webhook receiver's (from /proc)."""
        hooks = (self.config.get("webhooks") or {}).get("listen_address", "")
        exclude = [int(hooks.rpartition(":")[2])] if hooks else []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = listening_port(self.pid, exclude)
            if port is not None:
                return port
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"exporter did not listen within {timeout}s:\n{self.log()[-3000:]}")

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    def wait_ready(self, timeout: float = 20) -> float:
        """Seconds until ``/-/ready`` answers 200 (every meeting polled once)."""
        started = time.monotonic()

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter exited {self.proc.returncode}:\n{self.log()}")
            try:
                return self.get("/-/ready").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=timeout)
        return time.monotonic() - started

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.base + path, timeout=10, **kw)

    def metrics_text(self) -> str:
        response = self.get("/metrics")
        assert response.status_code == 200
        assert TOKEN not in response.text, "the API token leaked into /metrics"
        return response.text

    def scrape(self) -> Samples:
        return parse_metrics(self.metrics_text())


class Exporters:
    """Real exporters started on demand, ``start(config, *flags, env=…)``, each in a directory
    of its own under ``tmp`` (its config.yaml and exporter.log). ``forbidden``: what no log of
    theirs may hold (a description of each), checked by ``stop_all``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[ExporterProcess] = []
        self.forbidden: dict[str, str] = {TOKEN: "the API token"}

    def __call__(
        self, config: dict[str, Any], *args: str, env: dict[str, str] | None = None
    ) -> ExporterProcess:
        directory = self.tmp / f"exporter{len(self.started)}"
        directory.mkdir()
        self.started.append(ExporterProcess(config, directory, *args, env=env))
        return self.started[-1]

    def stop_all(self) -> None:
        """Stop every one, then check every line of every log."""
        for proc in self.started:
            proc.stop()
        for proc in self.started:
            log = proc.log()
            for text, what in self.forbidden.items():
                assert text not in log, f"{what} in the log {proc.log_path}"
