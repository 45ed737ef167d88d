"""The command line as a user meets it (issues 22, 23 and 27): each test runs the real
``realtimekit-exporter`` process."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.cli import MAX_SHARDS
from tests.support.api import TOKEN, sim_config
from tests.support.ports import free_port
from tests.support.process import exporter_command, stop_process, wait_for

pytestmark = pytest.mark.process

APP = {"account_id": "a", "app_id": "b"}


def env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CLOUDFLARE_API_TOKEN": TOKEN}


def run(*flags: str, limit_memory: bool = False) -> subprocess.CompletedProcess[str]:
    """The exporter with ``flags`` until it exits (at most 60 s); with ``limit_memory`` it may
    map at most 1 GiB."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [*exporter_command(), *flags],
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
        preexec_fn=limit if limit_memory else None,
    )


def write(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


# --- flags (issue 22 item 11) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            ["--web.listen-address", "nowhere"],
            "--web.listen-address: 'nowhere' is not HOST:PORT",
        ),
        (
            ["--web.telemetry-path", "metrics"],
            "--web.telemetry-path: 'metrics' must start with / and not with /-/",
        ),
        (
            ["--total-shards", "3", "--shard", "3"],
            "--shard: shard 3 is out of range for --total-shards=3 (0…2)",
        ),
    ],
)
def test_a_flag_problem_names_the_flag_not_the_config(
    tmp_path: Path, flags: list[str], line: str
) -> None:
    config = write(tmp_path, {"apps": [{**APP, "meetings": ["m1"]}]})
    for mode in (["--config.check"], []):
        result = run("--config.file", config, *mode, *flags)
        assert result.returncode == 1, result.stderr
        assert result.stderr == f"realtimekit-exporter: error: {line}\n"
        assert "config invalid" not in result.stderr and config not in result.stderr


# --- shards (issue 22 item 8, issue 23 item 12) ----------------------------------------------------


def test_config_check_prints_the_split_of_every_shard_without_shard(tmp_path: Path) -> None:
    meetings = [f"m{i}" for i in range(40)]
    config = write(tmp_path, {"apps": [{**APP, "meetings": meetings}]})
    result = run("--config.check", "--config.file", config, "--total-shards", "4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"config OK: {config}: 1 app(s)")
    assert lines[1].startswith("4 shards, 40 units (40 listed meetings, 0 discovering apps)")
    shards = [line for line in lines if line.startswith("shard ")]
    assert [line.split(":")[0] for line in shards] == [f"shard {i}" for i in range(4)]
    assert sum(int(line.split()[2]) for line in shards) == 40  # "shard 0: 9 meetings of …"
    # Naming one shard still checks it.
    named = run("--config.check", "--config.file", config, "--total-shards", "4", "--shard", "9")
    assert named.returncode == 1
    assert "--shard: shard 9 is out of range for --total-shards=4" in named.stderr


@pytest.mark.parametrize("count", ["100000000", "0", "-3", "1001", "many"])
def test_total_shards_is_bounded_before_anything_runs(tmp_path: Path, count: str) -> None:
    """--total-shards 100000000 used 16 GB: now a usage error, under a 1 GiB address-space cap."""
    config = write(tmp_path, {"apps": [{**APP, "meetings": ["m1"]}]})
    started = time.monotonic()
    result = run(
        "--config.check", "--config.file", config, "--total-shards", count, limit_memory=True
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 2, result.stderr
    (last,) = result.stderr.splitlines()[-1:]
    assert last.startswith("realtimekit-exporter: error: argument --total-shards: ")
    assert f"1 to {MAX_SHARDS}" in last or "is not a whole number" in last
    assert "Traceback" not in result.stderr


def test_the_largest_shard_count_works(tmp_path: Path) -> None:
    config = write(tmp_path, {"apps": [{**APP, "meetings": ["m1", "m2"]}]})
    result = run(
        "--config.check", "--config.file", config, "--total-shards", str(MAX_SHARDS),
        limit_memory=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{MAX_SHARDS} shards, 2 units" in result.stdout


# --- warnings of --config.check (issue 22 items 1 and 11) ------------------------------------------


def over_budget_config(base_url: str) -> dict[str, Any]:
    """60 meetings every second on a budget of 10 requests per 10 s."""
    return {
        "api": {
            "base_url": base_url,
            "timeout_seconds": 1,
            "rate_limit": {"requests": 10, "period_seconds": 10},
        },
        "poll": {"interval_seconds": 1, "stale_after_seconds": 5},
        "apps": [{**APP, "meetings": [f"m{i}" for i in range(60)]}],
    }


def test_config_check_warns_about_the_budget_as_start_does(
    tmp_path: Path, simulator: Any, start_exporter: Callable[..., Any]
) -> None:
    config = over_budget_config(simulator.base_url)
    check = run("--config.check", "--config.file", write(tmp_path, config))
    assert check.returncode == 0, check.stderr
    warnings = [line for line in check.stderr.splitlines() if "requests/s" in line]
    assert warnings == [
        "warning: 60 meetings every 1s need 60.00 requests/s but the token's budget allows "
        "0.95/s: polling them every 66.2s instead; raise poll.interval_seconds to at least 66, "
        "poll fewer meetings, or use a token with more budget"
    ]
    exporter = start_exporter(config)  # the same line, from the poller at start
    said = warnings[0].removeprefix("warning: ")
    wait_for(lambda: said in exporter.log(), timeout=15)


def test_config_check_is_quiet_when_the_budget_suffices(tmp_path: Path) -> None:
    config = write(tmp_path, {"apps": [{**APP, "meetings": ["m1", "m2"]}]})
    check = run("--config.check", "--config.file", config)
    assert check.returncode == 0 and check.stderr == "", check.stderr


def test_config_check_warns_when_stale_after_is_shorter_than_the_reconcile_interval(
    tmp_path: Path,
) -> None:
    config = {
        "poll": {"stale_after_seconds": 100},
        "webhooks": {"listen_address": "127.0.0.1:0", "reconcile_interval_seconds": 300},
        "apps": [{**APP, "meetings": ["m1"], "webhooks": {"enabled": True}}],
    }
    check = run("--config.check", "--config.file", write(tmp_path, config))
    assert check.returncode == 0, check.stderr
    assert (
        "warning: poll.stale_after_seconds (100) is shorter than "
        "webhooks.reconcile_interval_seconds (300) of apps[0] (webhooks enabled)"
    ) in check.stderr


# --- --log.level warn (issue 27) -------------------------------------------------------------------


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:  # not listening yet
        return False


@pytest.mark.parametrize("spelling", [["--log.level", "warn"], ["--log.level=warn"]])
def test_log_level_warn_as_node_exporter_spells_it(
    tmp_path: Path, simulator: Any, spelling: list[str]
) -> None:
    config = sim_config(simulator, stale_after_seconds=0.5)  # a warning at start
    port = free_port()
    log_path = tmp_path / "exporter.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                *exporter_command(),
                "--config.file",
                write(tmp_path, config),
                "--web.listen-address",
                f"127.0.0.1:{port}",
                *spelling,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env(),
        )
        try:
            wait_for(lambda: proc.poll() is None and ready(port), timeout=20)
        finally:
            stop_process(proc)
    assert proc.returncode == 0
    lines = log_path.read_text().splitlines()
    assert any(
        line.startswith("ts=") and " level=warning " in line and "poll.stale_after_seconds" in line
        for line in lines
    ), lines
    assert not [line for line in lines if " level=info " in line or " level=debug " in line]
