"""Shared helpers of the benchmarks: the simulator and the exporter as real processes on
127.0.0.1, /proc readings, and the small tables they print. Everything is bounded in time.

Not a benchmark itself (the leading underscore); ``python bench/NAME.py`` imports it.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_ID = "023e105f4ecef8ad9ca31a8372d0c353"
APP_ID = "6f0a8a2c3b8e4f62a1d2c3b4e5f60718"
TOKEN = "bench-token-" + os.urandom(8).hex()
#: A budget no benchmark reaches (the largest the config accepts): the limiter never waits.
HUGE_BUDGET = {"requests": 10**7, "period_seconds": 1}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine() -> str:
    """One line: cores, CPU model, Python, date."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, {when}"


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    out = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "CLOUDFLARE_API_TOKEN": TOKEN,
    }
    out.update(extra or {})
    return out


class Process:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, args: Sequence[str], log: Path, root: Path = ROOT) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=env({"PYTHONPATH": str(root)}),
        )
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log())
            if match:
                return match
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args} exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"no {pattern!r} within {timeout}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class SimulatorProcess(Process):
    """``python -m exporter.simulator`` on 127.0.0.1 with an ephemeral port."""

    def __init__(self, meetings: int, tmp: Path, *extra: str, seed: int = 1) -> None:
        super().__init__(
            [
                "-m", "exporter.simulator", "--listen", "127.0.0.1:0", "--meetings", str(meetings),
                "--seed", str(seed), "--token", TOKEN, *extra,
            ],
            tmp / "simulator.log",
        )  # fmt: skip
        match = self.wait_for(r"base_url=(\S+) .*meetings=(\S*)\n", timeout=60 + meetings / 200)
        self.base_url = match.group(1)
        self.meeting_ids = match.group(2).split(",") if match.group(2) else []


def exporter_config(
    base_url: str,
    meetings: Sequence[str],
    *,
    interval: float = 30,
    concurrency: int = 10,
    budget: dict[str, Any] | None = None,
    timeout: float = 10,
    app: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "api": {
            "base_url": base_url,
            "timeout_seconds": timeout,
            "rate_limit": budget or HUGE_BUDGET,
        },
        "poll": {"interval_seconds": interval, "concurrency": concurrency},
        "apps": [
            {"account_id": ACCOUNT_ID, "app_id": APP_ID, "meetings": list(meetings), **(app or {})}
        ],
    }


class ExporterProcess(Process):
    """``python -m exporter`` on 127.0.0.1 with an ephemeral port (``root``: which tree)."""

    def __init__(self, config: dict[str, Any], tmp: Path, root: Path = ROOT, *extra: str) -> None:
        path = tmp / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        super().__init__(
            [
                "-m", "exporter", "--config.file", str(path),
                "--web.listen-address", "127.0.0.1:0", "--log.level", "warning", *extra,
            ],
            tmp / "exporter.log",
            root,
        )  # fmt: skip
        self.config = config
        # --log.level warning hides the "listening" line: find the port in /proc instead.
        self.port = self._find_port(timeout=60)
        self.base = f"http://127.0.0.1:{self.port}"

    def _find_port(self, timeout: float) -> int:
        """The port of ``/metrics`` (not the webhook listener's, when the config has one)."""
        hooks = str(self.config.get("webhooks", {}).get("listen_address", ""))
        other = int(hooks.rsplit(":", 1)[1]) if hooks else None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = listening_port(self.pid, other)
            if port is not None:
                return port
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"exporter did not listen within {timeout}s:\n{self.log()[-3000:]}")

    def wait_ready(self, timeout: float) -> float:
        """Seconds until ``/-/ready`` (every meeting polled once)."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/-/ready", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.25)
        raise RuntimeError(f"exporter not ready within {timeout}s:\n{self.log()[-3000:]}")


def listening_port(pid: int, other: int | None = None) -> int | None:
    """The TCP port a process listens on (IPv4), other than ``other``, from /proc/PID/net/tcp
    and its fds."""
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
            if fields[3] == "0A" and fields[9] in inodes and port != other:  # LISTEN
                return port
    except OSError:
        return None
    return None


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    return 3600 * sum((t - mx) * (v - my) for t, v in points) / den if den else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pasteable into BENCHMARKS.md)."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells[1:]]
    return "\n".join(out)


def tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"rtk-{prefix}-"))


def bounded(seconds: float) -> Callable[[], bool]:
    """A deadline check: ``while more(): ...``."""
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() < deadline
