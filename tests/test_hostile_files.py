"""Hostile files (issue 13, items 11 and 12): every one is one clear line and exit 1, never a hang.

The real process is run with ``--config.check`` on each file: a FIFO, ``/dev/zero``, a directory,
invalid UTF-8, YAML nested 20,000 and 200,000 deep (the latter crashes libyaml's composer), files
over the size caps, and numbers that crashed the exporter at start (``.inf``, ``1e300``).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import ConfigError, load_config, parse_config, read_tokens
from exporter.files import MAX_CONFIG_BYTES, MAX_TOKEN_BYTES, MAX_YAML_DEPTH, read_file
from tests.support.api import TOKEN

APP = {"account_id": "a", "app_id": "b", "meetings": ["m"]}
ENV = {"PATH": "/usr/bin:/bin", "CLOUDFLARE_API_TOKEN": TOKEN}


def config_with(**top: Any) -> dict[str, Any]:
    return {"apps": [APP], **top}


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def alias_bomb(n: int) -> str:
    """24 KB for n=3000: n apps of n meetings each, all aliases (9 million meetings to check)."""
    many = ", ".join
    return (
        f"x-m: &m {{id: m1}}\nx-ms: &ms [{many(['*m'] * n)}]\n"
        f"x-a: &a {{account_id: a, app_id: b, meetings: *ms}}\napps: [{many(['*a'] * n)}]\n"
    )


def run_exporter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=20,  # a FIFO that blocked the read would hang here
    )


# --- the real process ---------------------------------------------------------------------------


def _config_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Config files that must fail: the file and a fragment of the one problem line."""
    fifo = tmp / "config.fifo"
    os.mkfifo(fifo)
    (tmp / "a-directory").mkdir()
    return {
        "inf": (
            write(
                tmp / "inf.yml",
                "api: {rate_limit: {period_seconds: .inf}}\napps: [{account_id: a, app_id: b, meetings: [m]}]\n",
            ),
            "api.rate_limit.period_seconds: must be a finite number",
        ),
        "1e300": (
            write(tmp / "huge.yml", yaml.safe_dump(config_with(poll={"interval_seconds": 1e300}))),
            "poll.interval_seconds: must be at most 604800 (7 days)",
        ),
        "bad-utf8": (
            write(tmp / "bad.yml", b"apps:\n  - account_id: \xff\n"),
            "bad.yml: not UTF-8 text: invalid byte at line 2 (offset 22)",
        ),
        "deep-20000": (
            write(tmp / "deep.yml", deep(20_000)),
            f": nested deeper than {MAX_YAML_DEPTH} levels",  # the column: ours 101, newer libyaml 1001,
        ),
        "deep-200000": (
            write(tmp / "deeper.yml", deep(200_000)),
            f": nested deeper than {MAX_YAML_DEPTH} levels",  # the column: ours 101, newer libyaml 1001,
        ),
        "alias-bomb": (write(tmp / "bomb.yml", alias_bomb(3000)), "expands to more than"),
        "bad-date": (write(tmp / "date.yml", "x: 2024-13-45\n"), "invalid YAML: month must be"),
        "too-large": (
            write(tmp / "big.yml", b"#" * (MAX_CONFIG_BYTES + 1)),
            "config file: cannot read '{}': larger than the limit of 4 MiB".format(tmp / "big.yml"),
        ),
        "dev-zero": (Path("/dev/zero"), "it is a character device, not a regular file"),
        "fifo": (fifo, "it is a FIFO, not a regular file"),
        "directory": (tmp / "a-directory", "it is a directory, not a regular file"),
    }


def _token_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Token files that must fail: the file and a fragment of the one problem line."""
    fifo = tmp / "token.fifo"
    os.mkfifo(fifo)
    return {
        "bad-utf8": (
            write(tmp / "token-bad", b"abc\xfe\xffdef\n"),
            "not UTF-8 text: invalid byte at line 1 (offset 3)",
        ),
        "too-large": (
            write(tmp / "token-big", b"x" * (MAX_TOKEN_BYTES + 1)),
            "larger than the limit of 64 KiB",
        ),
        "dev-zero": (Path("/dev/zero"), "it is a character device, not a regular file"),
        "fifo": (fifo, "it is a FIFO, not a regular file"),
        "directory": (tmp, "it is a directory, not a regular file"),
        "nul-in-name": (Path("a\0b"), "the name contains a NUL character"),
    }


def assert_one_problem(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    first, *problems = proc.stderr.splitlines()
    assert first.startswith("config invalid: "), proc.stderr
    assert len(problems) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in problems[0], proc.stderr


@pytest.mark.process
def test_config_check_refuses_each_hostile_config_file(tmp_path: Path):
    for name, (path, fragment) in _config_cases(tmp_path).items():
        proc = run_exporter("--config.file", str(path), "--config.check")
        assert_one_problem(proc, fragment)
        assert str(path) in proc.stderr.splitlines()[1] or name in ("inf", "1e300"), name


@pytest.mark.process
def test_start_with_a_hostile_config_file_is_one_line(tmp_path: Path):
    cases = _config_cases(tmp_path)
    for name in ("bad-utf8", "deep-200000", "fifo", "dev-zero"):
        path, fragment = cases[name]
        proc = run_exporter("--config.file", str(path))
        assert proc.returncode == 1, (name, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        assert fragment in proc.stderr, proc.stderr


@pytest.mark.process
def test_config_check_refuses_each_hostile_token_file(tmp_path: Path):
    for name, (path, fragment) in _token_cases(tmp_path).items():
        config = write(
            tmp_path / f"config-{name}.yml",
            yaml.safe_dump(config_with(api={"token_file": str(path)})),
        )
        proc = run_exporter("--config.file", str(config), "--config.check")
        assert_one_problem(proc, "api.token_file: ", fragment)


@pytest.mark.process
def test_config_check_refuses_a_hostile_web_config_file(tmp_path: Path):
    config = write(tmp_path / "config.yml", yaml.safe_dump(config_with()))
    for content in (b"basic_auth_users: {\xff: x}\n", deep(20_000).encode()):
        web = write(tmp_path / "web.yml", content)
        proc = run_exporter(
            "--config.file", str(config), "--web.config.file", str(web), "--config.check"
        )
        assert_one_problem(proc, f"--web.config.file {web}: {web}: ")


# --- numbers ------------------------------------------------------------------------------------

FLOAT_KEYS = {
    "api.timeout_seconds": ("7 days", 604800),
    "api.rate_limit.period_seconds": ("7 days", 604800),
    "poll.interval_seconds": ("7 days", 604800),
    "poll.max_backoff_seconds": ("7 days", 604800),
    "poll.stale_after_seconds": ("30 days", 2592000),
}
INT_KEYS = {
    "api.rate_limit.requests": 10**7,
    "poll.concurrency": 10_000,
    "apps[0].discover.max_meetings": 10**6,
    "apps[0].discover.per_page": 1000,
}


def config_setting(key: str, value: Any) -> dict[str, Any]:
    """A valid config with ``key`` (a dotted path as messages spell it) set to ``value``."""
    data: dict[str, Any] = {"apps": [{**APP, "discover": {"enabled": True}}]}
    *parents, last = key.replace("[0]", "").split(".")
    node = data
    for part in parents:
        node = node[part][0] if part == "apps" else node.setdefault(part, {})
    node[last] = value
    return data


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


@pytest.mark.parametrize("key", [*FLOAT_KEYS, "api.rate_limit.reserve_fraction"])
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_every_float_must_be_finite(key: str, bad: float):
    assert problems_of(config_setting(key, bad)) == [f"{key}: must be a finite number"]


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_has_an_upper_bound_named_in_the_message(key: str):
    name, limit = FLOAT_KEYS[key]
    parse_config(config_setting(key, limit))  # the bound itself is allowed
    for bad in (1e300, limit + 0.5, 10**400):
        message = f"must be at most {limit} ({name})"
        if bad == 10**400:  # an integer beyond float range: not a number at all
            message = "must be a valid number (got an integer)"
        assert problems_of(config_setting(key, bad)) == [f"{key}: {message}"]


@pytest.mark.parametrize("key", INT_KEYS)
def test_every_integer_has_an_upper_bound_named_in_the_message(key: str):
    limit = INT_KEYS[key]
    parse_config(config_setting(key, limit))
    for bad in (limit + 1, 10**400):
        assert problems_of(config_setting(key, bad)) == [f"{key}: must be at most {limit}"]
    for bad in (1e300, math.inf, math.nan):
        assert problems_of(config_setting(key, bad)) == [
            f"{key}: must be a valid integer (got a number)"
        ]


def test_reserve_fraction_1e300_is_out_of_range():
    key = "api.rate_limit.reserve_fraction"
    assert problems_of(config_setting(key, 1e300)) == [f"{key}: must be less than 1"]


# --- files, in process --------------------------------------------------------------------------


def test_read_file_is_bounded(tmp_path: Path):
    path = write(tmp_path / "f", b"x" * 1000)
    assert read_file(path, 1000, "what") == b"x" * 1000
    with pytest.raises(ConfigError) as info:
        read_file(path, 999, "what")
    assert info.value.problems == [f"what: cannot read '{path}': larger than the limit of 0 KiB"]
    with pytest.raises(ConfigError) as info:
        read_file(tmp_path / "missing", 10, "what")
    assert info.value.problems == [
        f"what: cannot read '{tmp_path / 'missing'}': No such file or directory"
    ]


def test_nesting_up_to_the_limit_is_accepted(tmp_path: Path):
    # A config nests 6 levels; MAX_YAML_DEPTH levels parse (and then fail validation, not YAML).
    path = write(tmp_path / "c.yml", "apps: " + deep(MAX_YAML_DEPTH - 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith("apps[0]: "), info.value.problems
    write(path, "apps: " + deep(MAX_YAML_DEPTH))
    with pytest.raises(ConfigError, match="nested deeper than 100 levels"):
        load_config(path)


def test_aliases_are_expanded_within_a_bound(tmp_path: Path):
    shared = (
        "apps: [{account_id: a, app_id: b, meetings: "
        "[{id: m1, labels: &team {team: sales, floor: '3'}}, {id: m2, labels: *team}]}]\n"
    )
    config = load_config(write(tmp_path / "ok.yml", shared))
    assert [m.labels for m in config.apps[0].meetings] == [{"team": "sales", "floor": "3"}] * 2
    path = write(tmp_path / "bomb.yml", alias_bomb(1800))  # 1800 * 1800 > 3,000,000
    with pytest.raises(ConfigError, match="expands to more than 3000000 values"):
        load_config(path)
    write(path, alias_bomb(100))  # 10,000 meetings: under the bound, validated (duplicates)
    with pytest.raises(ConfigError, match="is listed more than once"):
        load_config(path)
    write(path, "a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match=r"column 11: alias \*a is inside its own anchor"):
        load_config(path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("x: 2001-12-14 21:59:43.10 +99:99\n", "invalid YAML: offset must be a timedelta"),
        ("x: " + "1" * 5000 + "\n", "invalid YAML: Exceeds the limit (4300 digits)"),
        ('x: "\x01"\n', "invalid YAML at offset 4: control characters are not allowed"),
        ("x: !!python/object:os.system {}\n", "invalid YAML at line 1, column 4: could not"),
    ],
    ids=["timezone", "5000-digits", "control-char", "python-tag"],
)
def test_values_yaml_cannot_build_are_config_errors(tmp_path: Path, content: str, problem: str):
    path = write(tmp_path / "c.yml", content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{path}: {problem}"), info.value.problems


def in_a_daemon_thread(call: Callable[[], Any]) -> BaseException | None:
    """What ``call`` raised in a daemon thread; fails (rather than hangs) if it blocks."""
    raised: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            raised.append(None)
        except BaseException as err:
            raised.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert raised, "the call blocked"
    return raised[0]


def test_loading_in_a_worker_thread_never_blocks_on_a_fifo(tmp_path: Path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    token_config = parse_config(config_with(api={"token_file": str(fifo)}))
    for call in (lambda: load_config(fifo), lambda: read_tokens(token_config, {})):
        err = in_a_daemon_thread(call)
        assert isinstance(err, ConfigError) and "it is a FIFO" in str(err), err


def test_token_error_never_shows_the_token_bytes(tmp_path: Path):
    secret = write(tmp_path / "token", TOKEN.encode() + b"\xff" + TOKEN.encode())
    config = parse_config(config_with(api={"token_file": str(secret)}))
    with pytest.raises(ConfigError) as info:
        read_tokens(config, {})
    assert info.value.problems == [
        f"api.token_file: '{secret}': not UTF-8 text: invalid byte at line 1 (offset {len(TOKEN)})"
    ]
