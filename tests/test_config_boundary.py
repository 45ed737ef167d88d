"""One config boundary (issue 21): every rule of what start-up reads lives in exporter.config, so
``--config.check`` and a real start agree on every config, and a reload validates the same way.

The table at the end runs each kind of start-up failure through both a real
``realtimekit-exporter --config.check`` process and a real start of the exporter.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from exporter.config import HA_EXTRA, ConfigError, parse_config, restart_needed
from tests.support.api import TOKEN, sim_config
from tests.support.pki import make_ca
from tests.support.process import exporter_command, wait_for

PASSWORD = "redis-PASS-9f8e7d6c"
APP = {"account_id": "a", "app_id": "b", "meetings": ["m1"]}
NO_PASSWORD = "must not contain a password; give it in a password file or environment variable"


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return err.value.problems


def with_coordination(**block: Any) -> dict[str, Any]:
    return {"coordination": {"redis_url": "redis://127.0.0.1:6379/0", **block}, "apps": [APP]}


# --- coordination: the rules that lived twice -----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"redis://:{PASSWORD}@127.0.0.1:6379/0", [NO_PASSWORD]),
        (f"redis://user:{PASSWORD}@127.0.0.1:6379/0", [NO_PASSWORD]),
        (f"redis://127.0.0.1:6379/0?password={PASSWORD}", [NO_PASSWORD]),  # redis-py uses it
        (f"redis://127.0.0.1/0?db=1&Password={PASSWORD}", [NO_PASSWORD]),
        (f"rediss://127.0.0.1/0?ssl_password={PASSWORD}", [NO_PASSWORD]),
        ("redis://127.0.0.1:99999/0", ["the port must be a number from 1 to 65535, not '99999'"]),
        ("redis://127.0.0.1:0/0", ["the port must be a number from 1 to 65535, not '0'"]),
        ("redis://127.0.0.1:x1/0", ["the port must be a number from 1 to 65535, not 'x1'"]),
        (
            "redis://127.0.0.1:6379/zero",
            ["the path must be a database number (redis://host:port/0)"],
        ),
        ("http://127.0.0.1:6379", ["must be redis://host:port/db or rediss://…"]),
        ("redis:///0", ["must be redis://host:port/db or rediss://…"]),
        ("redis://[::1/0", ["not a valid URL"]),
        (
            f"http://:{PASSWORD}@127.0.0.1:99999",  # every problem, one line each
            [
                "must be redis://host:port/db or rediss://…",
                NO_PASSWORD,
                "the port must be a number from 1 to 65535, not '99999'",
            ],
        ),
    ],
)
def test_redis_url_rules(url: str, expected: list[str]) -> None:
    problems = problems_of(with_coordination(redis_url=url))
    assert problems == [f"coordination.redis_url: {p}" for p in expected]
    assert PASSWORD not in str(problems)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://redis.example:6380", "redis://[::1]:6379/15"]
)
def test_good_redis_urls(url: str) -> None:
    config = parse_config(with_coordination(redis_url=url))
    assert config.coordination is not None and config.coordination.redis_url == url


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"key_prefix": "has space"}, "coordination.key_prefix: must be non-empty, without spaces"),
        ({"key_prefix": ""}, "coordination.key_prefix: must be non-empty, without spaces"),
        ({"lease_seconds": 0}, "coordination.lease_seconds: must be greater than or equal to 1"),
        ({"lease_seconds": 3601}, "coordination.lease_seconds: must be at most 3600"),
        (
            {"password_env": "not a name"},
            "coordination.password_env: 'not a name' is not an environment variable name",
        ),
        (
            {"password_env": "P", "password_file": "/p"},
            "coordination.password_file: set password_env or password_file, not both",
        ),
    ],
)
def test_coordination_block_rules(block: dict[str, Any], expected: str) -> None:
    assert problems_of(with_coordination(**block)) == [expected]


def test_coordination_ca_file_is_checked_at_load(tmp_path: Path) -> None:
    ca = str(make_ca(tmp_path))
    tls = "rediss://127.0.0.1:6380/0"
    config = parse_config(with_coordination(redis_url=tls, ca_file=ca))
    assert config.coordination is not None and config.coordination.ca_file == ca
    assert problems_of(with_coordination(ca_file=ca)) == [
        "coordination.ca_file: is only used with a rediss:// (TLS) redis_url"
    ]
    missing = tmp_path / "missing.pem"
    assert problems_of(with_coordination(redis_url=tls, ca_file=str(missing))) == [
        f"coordination.ca_file: cannot read '{missing}': No such file or directory"
    ]
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert problems_of(with_coordination(redis_url=tls, ca_file=str(junk))) == [
        f"coordination.ca_file: '{junk}' holds no usable PEM certificate"
    ]


def test_coordination_needs_the_ha_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis or limits installed a coordination block is one line naming the extra
    (issue 27); a config without one does not care."""
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "limits" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert problems_of(with_coordination()) == [HA_EXTRA]
    assert HA_EXTRA == "coordination needs the ha extra: pip install 'realtimekit-exporter[ha]'"
    assert parse_config({"apps": [APP]}).coordination is None


# --- labels (issue 22 item 11) -------------------------------------------------------------------


def test_every_bad_label_is_reported_and_the_dunder_prefix_is_named() -> None:
    meeting = {"id": "m1", "labels": {"__x": "1", "2bad": "2", "ok": "3", "meeting_id": "4"}}
    discover = {"enabled": True, "labels": {"__y": "1", "job": "2"}}
    problems = problems_of(
        {"apps": [{"account_id": "a", "app_id": "b", "meetings": [meeting], "discover": discover}]}
    )
    at, found = "apps[0].meetings[0].labels", "apps[0].discover.labels"
    assert problems == [
        f"{at}: invalid label name '__x': the '__' prefix is reserved for Prometheus' own labels",
        f"{at}: invalid label name '2bad': use [a-zA-Z_][a-zA-Z0-9_]*",
        f"{at}: label name 'meeting_id' clashes with a label of the exporter",
        f"{found}: invalid label name '__y': the '__' prefix is reserved for Prometheus' own labels",
        f"{found}: label name 'job' clashes with a label of the exporter",
    ]


def test_a_label_name_that_is_no_string_is_named() -> None:
    meeting = {"id": "m1", "labels": {1: "x", "ok": 2}}
    assert problems_of({"apps": [{**APP, "meetings": [meeting]}]}) == [
        "apps[0].meetings[0].labels: name 1 must be a valid string (got an integer)",
        "apps[0].meetings[0].labels.ok: must be a valid string (got an integer)",
    ]


# --- the webhook key file is read and parsed at load ---------------------------------------------


def write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def hooked(key_file: Path | str) -> dict[str, Any]:
    return {
        "webhooks": {"listen_address": "127.0.0.1:0", "public_key_file": str(key_file)},
        "apps": [{**APP, "webhooks": {"enabled": True}}],
    }


def test_webhook_key_file_is_checked_at_load(tmp_path: Path) -> None:
    good = write_key(tmp_path / "key.pem", rsa_key())
    assert parse_config(hooked(good)).webhooks.public_key_file == str(good)
    missing = tmp_path / "missing.pem"
    assert problems_of(hooked(missing)) == [
        f"webhooks.public_key_file: cannot read '{missing}': No such file or directory"
    ]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
    (problem,) = problems_of(hooked(garbage))
    assert problem.startswith(f"webhooks.public_key_file: '{garbage}': not a PEM public key (")
    ec_key = write_key(tmp_path / "ec.pem", ec.generate_private_key(ec.SECP256R1()))
    (problem,) = problems_of(hooked(ec_key))
    assert problem.startswith(f"webhooks.public_key_file: '{ec_key}': a ")
    assert problem.endswith("key, RSA expected")
    huge = tmp_path / "huge.pem"
    huge.write_bytes(b"x" * (64 * 1024 + 1))
    assert problems_of(hooked(huge)) == [
        f"webhooks.public_key_file: cannot read '{huge}': larger than the limit of 64 KiB"
    ]
    assert problems_of(hooked(tmp_path)) == [
        f"webhooks.public_key_file: cannot read '{tmp_path}': it is a directory, not a regular file"
    ]


# --- warnings --------------------------------------------------------------------------------------


def test_stale_after_shorter_than_the_reconcile_interval_is_warned_about() -> None:
    """Issue 22 item 1: an explicit stale_after_seconds below the reconcile interval of an app
    with webhooks; no warning without webhooks, nor with the default stale_after."""
    hooks = {"listen_address": "127.0.0.1:0", "reconcile_interval_seconds": 300}
    apps = [APP, {**APP, "app_id": "c", "webhooks": {"enabled": True}}]
    config = parse_config({"poll": {"stale_after_seconds": 120}, "webhooks": hooks, "apps": apps})
    assert config.warnings() == [
        "poll.stale_after_seconds (120) is shorter than webhooks.reconcile_interval_seconds (300) "
        "of apps[1] (webhooks enabled): while their webhooks are healthy those apps are polled "
        "every 300s, and their values are kept that long (stale_after_seconds is a floor)"
    ]
    assert parse_config({"webhooks": hooks, "apps": apps}).warnings() == []
    longer = {"poll": {"stale_after_seconds": 300}, "webhooks": hooks, "apps": apps}
    assert parse_config(longer).warnings() == []
    plain = {"poll": {"stale_after_seconds": 120}, "webhooks": hooks, "apps": [APP]}
    assert parse_config(plain).warnings() == []


# --- reload: the blocks only a restart applies ----------------------------------------------------


def test_restart_needed_names_the_changed_keys(tmp_path: Path) -> None:
    key = write_key(tmp_path / "key.pem", rsa_key())
    base = hooked(key) | {"coordination": {"redis_url": "redis://127.0.0.1:6379/0"}}
    running = parse_config(base)
    assert restart_needed(running, parse_config(base)) is None
    polled_faster = parse_config(base | {"poll": {"interval_seconds": 5}})
    assert restart_needed(running, polled_faster) is None
    moved = parse_config(
        base
        | {
            "webhooks": {**base["webhooks"], "listen_address": "127.0.0.1:1"},
            "coordination": {"redis_url": "redis://127.0.0.1:6380/0", "key_prefix": "other"},
        }
    )
    assert restart_needed(running, moved) == (
        "config reload: coordination.redis_url, coordination.key_prefix, webhooks.listen_address "
        "changed; a reload keeps the running values, restart to apply them"
    )
    dropped = parse_config({k: v for k, v in base.items() if k != "coordination"})
    assert restart_needed(running, dropped) == (
        "config reload: coordination changed; a reload keeps the running values, "
        "restart to apply them"
    )


@pytest.mark.process
def test_a_reload_says_which_changes_need_a_restart(
    tmp_path: Path, simulator: Any, start_exporter: Callable[..., Any]
) -> None:
    key = write_key(tmp_path / "key.pem", rsa_key())
    config = sim_config(simulator)
    config["webhooks"] = {"listen_address": "127.0.0.1:0", "public_key_file": str(key)}
    config["apps"][0]["webhooks"] = {"enabled": True}
    exporter = start_exporter(config)
    exporter.wait_ready()
    config["webhooks"]["reconcile_interval_seconds"] = 120
    exporter.write_config(config)
    reply = httpx.post(exporter.base + "/-/reload", timeout=30)
    assert reply.status_code == 200, reply.text
    line = (
        "config reload: webhooks.reconcile_interval_seconds changed; a reload keeps the running "
        "values, restart to apply them"
    )
    wait_for(lambda: line in exporter.log(), timeout=10)
    # A broken key file fails the reload the same way it fails a start; the old config runs on.
    key.write_text("not a key")
    reply = httpx.post(exporter.base + "/-/reload", timeout=30)
    assert reply.status_code == 500
    assert "webhooks.public_key_file" in reply.text and "not a PEM public key" in reply.text


# --- the table: --config.check and a real start agree on every start-up failure -------------------


def run_exporter(
    config_file: Path, *flags: str, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run the real exporter until it exits, at most ``timeout`` seconds (a start that does not
    fail is stopped and reported)."""
    command = [*exporter_command(), "--config.file", str(config_file), *flags]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"{command} did not exit within {timeout}s: {err}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def base_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CLOUDFLARE_API_TOKEN": TOKEN}


def _coordination(**block: Any) -> dict[str, Any]:
    return {"coordination": {"redis_url": "redis://127.0.0.1:1/0", **block}}


#: name -> (config with "{tmp}" for the test's directory, environment changes, expected lines)
FAILURES: dict[str, tuple[dict[str, Any], dict[str, str | None], list[str]]] = {
    "redis-url-scheme": (
        _coordination(redis_url="http://127.0.0.1:6379/0"),
        {},
        ["coordination.redis_url: must be redis://host:port/db or rediss://…"],
    ),
    "redis-url-password": (
        _coordination(redis_url=f"redis://:{PASSWORD}@127.0.0.1:6379/0"),
        {},
        [f"coordination.redis_url: {NO_PASSWORD}"],
    ),
    "redis-url-password-in-query": (
        _coordination(redis_url=f"redis://127.0.0.1:6379/0?password={PASSWORD}"),
        {},
        [f"coordination.redis_url: {NO_PASSWORD}"],
    ),
    "redis-url-port": (
        _coordination(redis_url="redis://127.0.0.1:99999/0"),
        {},
        ["coordination.redis_url: the port must be a number from 1 to 65535, not '99999'"],
    ),
    "redis-prefix": (
        _coordination(key_prefix="has space"),
        {},
        ["coordination.key_prefix: must be non-empty, without spaces"],
    ),
    "redis-lease": (
        _coordination(lease_seconds=0.5),
        {},
        ["coordination.lease_seconds: must be greater than or equal to 1"],
    ),
    "redis-password-file-missing": (
        _coordination(password_file="{tmp}/no-password"),
        {},
        ["coordination.password_file: cannot read '{tmp}/no-password': No such file or directory"],
    ),
    "redis-password-env-empty": (
        _coordination(password_env="REDIS_PASSWORD"),
        {"REDIS_PASSWORD": ""},
        ["coordination.password_env: environment variable REDIS_PASSWORD is not set or empty"],
    ),
    "redis-ca-file-missing": (
        _coordination(redis_url="rediss://127.0.0.1:1/0", ca_file="{tmp}/no-ca.pem"),
        {},
        ["coordination.ca_file: cannot read '{tmp}/no-ca.pem': No such file or directory"],
    ),
    "webhook-key-file-missing": (
        {"webhooks": {"listen_address": "127.0.0.1:0", "public_key_file": "{tmp}/missing.pem"}},
        {},
        ["webhooks.public_key_file: cannot read '{tmp}/missing.pem': No such file or directory"],
    ),
    "webhook-key-file-bad": (
        {"webhooks": {"listen_address": "127.0.0.1:0", "public_key_file": "{tmp}/bad.pem"}},
        {},
        ["webhooks.public_key_file: '{tmp}/bad.pem': not a PEM public key ("],
    ),
    "token-file-missing": (
        {"api": {"token_file": "{tmp}/no-token"}},
        {},
        ["api.token_file: cannot read '{tmp}/no-token': No such file or directory"],
    ),
    "token-env-empty": (
        {},
        {"CLOUDFLARE_API_TOKEN": "  "},
        ["api.token_env: environment variable CLOUDFLARE_API_TOKEN is not set or empty"],
    ),
    "token-env-unset": (
        {},
        {"CLOUDFLARE_API_TOKEN": None},
        ["api.token_env: environment variable CLOUDFLARE_API_TOKEN is not set or empty"],
    ),
    "label-reserved-prefix": (
        {"apps": [{**APP, "meetings": [{"id": "m1", "labels": {"__x": "1", "2y": "2"}}]}]},
        {},
        [
            "apps[0].meetings[0].labels: invalid label name '__x': the '__' prefix is reserved "
            "for Prometheus' own labels",
            "apps[0].meetings[0].labels: invalid label name '2y': use [a-zA-Z_][a-zA-Z0-9_]*",
        ],
    ),
    "unknown-key": ({"poll": {"interval_secs": 5}}, {}, ["poll.interval_secs: unknown key"]),
    "bad-id": (
        {"apps": [{**APP, "meetings": ["a/b"]}]},
        {},
        ["apps[0].meetings[0].id: invalid id 'a/b': use only letters, digits, '-' and '_'"],
    ),
}


@pytest.mark.process
@pytest.mark.parametrize("name", sorted(FAILURES))
def test_config_check_and_start_fail_alike(name: str, tmp_path: Path) -> None:
    block, env_changes, expected = FAILURES[name]
    (tmp_path / "bad.pem").write_text("-----BEGIN PUBLIC KEY-----\ngarbage\n")
    data = {"apps": [APP], **yaml.safe_load(yaml.safe_dump(block).replace("{tmp}", str(tmp_path)))}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    env = base_env()
    for variable, setting in env_changes.items():
        if setting is None:
            env.pop(variable, None)
        else:
            env[variable] = setting
    lines = [line.replace("{tmp}", str(tmp_path)) for line in expected]
    check = run_exporter(path, "--config.check", env=env)
    start = run_exporter(path, "--web.listen-address", "127.0.0.1:0", env=env)
    for run in (check, start):
        assert run.returncode == 1, (run.args, run.stdout, run.stderr)
        for line in lines:
            assert line in run.stderr, (run.args, run.stderr)
        assert "Traceback" not in run.stderr
        assert PASSWORD not in run.stdout + run.stderr
        assert TOKEN not in run.stdout + run.stderr
    assert check.stderr.startswith(f"config invalid: {path}\n")
    assert len(start.stderr.strip().splitlines()) == 1, start.stderr  # one line at start


@pytest.mark.process
def test_without_the_ha_extra_check_and_start_say_so_in_one_line(tmp_path: Path) -> None:
    """The real process, with ``limits`` made unimportable (``sys.modules['limits'] = None``
    in a sitecustomize: ``find_spec`` then answers None, as when the package is absent)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['limits'] = None\n")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"apps": [APP], **_coordination()}))
    env = base_env() | {"PYTHONPATH": str(site)}
    check = run_exporter(path, "--config.check", env=env)
    start = run_exporter(path, "--web.listen-address", "127.0.0.1:0", env=env)
    assert check.returncode == start.returncode == 1
    assert check.stderr == f"config invalid: {path}\n  {HA_EXTRA}\n"
    assert start.stderr == f"realtimekit-exporter: error: {path}: {HA_EXTRA}\n"
    # The same file without the block starts the check fine in that environment.
    path.write_text(yaml.safe_dump({"apps": [APP]}))
    assert run_exporter(path, "--config.check", env=env).returncode == 0
