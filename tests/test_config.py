"""Config validation: one small fixture per failure, each checked against its exact message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.config import ConfigError, load_config, parse_config, read_token, read_tokens
from tests.support.api import TOKEN

CONFIGS = Path(__file__).parent / "configs"
ID_CHARS = "use only letters, digits, '-' and '_'"

CASES = {
    "unknown-key": ["poll.interval_secs: unknown key"],
    "wrong-type": ["poll.interval_seconds: must be a valid number (got a string)"],
    "negative-interval": ["poll.interval_seconds: must be greater than 0"],
    "empty-meetings": ["apps[0]: meetings must list at least one entry (or enable discover)"],
    "no-apps": ["apps: required key is missing"],
    "duplicate-meeting": ["apps[0].meetings: meeting 'm1' is listed more than once"],
    "account-too-long": [
        "apps[0].account_id: id '023e105f4ecef8ad9ca31a8372d0c353023e105f4ecef8ad9ca31a8372d0c3531' "
        "is 65 characters long, at most 64 allowed"
    ],
    "id-slash": [f"apps[0].meetings[0].id: invalid id 'a/b': {ID_CHARS}"],
    "id-question": [f"apps[0].app_id: invalid id 'app?x=1': {ID_CHARS}"],
    "id-hash": [f"apps[0].meetings[0].id: invalid id 'm1#frag': {ID_CHARS}"],
    "id-dotdot": [f"apps[0].meetings[0].id: invalid id '..': {ID_CHARS}"],
    "label-name": [
        "apps[0].meetings[0].labels: invalid label name '2team': use [a-zA-Z_][a-zA-Z0-9_]*"
    ],
    "label-clash": [
        "apps[0].meetings[0].labels: label name 'meeting_id' clashes with a label of the exporter"
    ],
    "label-value-type": [
        "apps[0].meetings[0].labels.floor: must be a valid string (got an integer)"
    ],
    "token-both": ["api.token_file: set token_env or token_file, not both"],
    "insecure-http": [
        "api.base_url: 'http://api.example.com/client/v4' is plain http to a non-loopback host; "
        "use https or set api.allow_insecure_http: true"
    ],
    "yaml": [  # libyaml's wording; PyYAML's own says "expected ',' or ']', but got ..."
        f"{CONFIGS / 'invalid-yaml.yml'}: invalid YAML at line 4, column 1: "
        + (
            "did not find expected ',' or ']'"
            if yaml.__with_libyaml__
            else "expected ',' or ']', but got '<stream end>'"
        )
    ],
    "not-mapping": ["(top level): the config must be a mapping of keys"],
    "many-problems": [
        "api.timeout_seconds: must be greater than 0",
        f"apps[0].meetings[1].id: invalid id 'x y': {ID_CHARS}",
        "apps[0].extra: unknown key",
    ],
}


def test_every_fixture_has_a_case():
    on_disk = {p.stem.removeprefix("invalid-") for p in CONFIGS.glob("invalid-*.yml")}
    assert on_disk == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_invalid_config_message(name: str):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / f"invalid-{name}.yml")
    assert info.value.problems == CASES[name]


def test_valid_minimal_config_gets_defaults():
    config = load_config(CONFIGS / "valid-minimal.yml")
    assert config.api.base_url == "https://api.cloudflare.com/client/v4"
    assert config.api.rate_limit.requests == 1200
    assert config.poll.interval_seconds == 30
    assert config.poll.stale_after == 90
    assert config.warnings() == []


def test_example_config_is_valid():
    config = load_config(Path(__file__).parent.parent / "config.example.yaml")
    assert len(config.targets()) == 2


def test_config_is_frozen():
    config = load_config(CONFIGS / "valid-minimal.yml")
    with pytest.raises(Exception, match="frozen"):
        config.poll.interval_seconds = 1  # type: ignore[misc]


def test_small_and_large_numbers_are_accepted_with_warnings():
    config = parse_config(
        {
            "api": {"timeout_seconds": 5, "rate_limit": {"requests": 10, "period_seconds": 10}},
            "poll": {"interval_seconds": 1, "stale_after_seconds": 0.5},
            "apps": [{"account_id": "a", "app_id": "b", "meetings": ["m1", "m2"]}],
        }
    )
    assert config.warnings() == [
        "poll.stale_after_seconds (0.5) is shorter than poll.interval_seconds (1): "
        "values will vanish between polls",
        "api.timeout_seconds (5) is longer than poll.interval_seconds (1)",
    ]


def test_loopback_http_is_allowed_and_insecure_http_can_be_opted_into():
    for url in ("http://127.0.0.1:8080/client/v4", "http://localhost/x", "http://[::1]:1/"):
        parse_config(
            {
                "api": {"base_url": url},
                "apps": [{"account_id": "a", "app_id": "b", "meetings": ["m"]}],
            }
        )
    parse_config(
        {
            "api": {"base_url": "http://sim:8080/client/v4", "allow_insecure_http": True},
            "apps": [{"account_id": "a", "app_id": "b", "meetings": ["m"]}],
        }
    )


def test_token_from_env_and_file(tmp_path: Path):
    config = parse_config({"apps": [{"account_id": "a", "app_id": "b", "meetings": ["m"]}]})
    ref = config.token_ref(config.apps[0])
    assert read_token(ref, {"CLOUDFLARE_API_TOKEN": f" {TOKEN}\n"}) == TOKEN
    with pytest.raises(ConfigError) as info:
        read_token(ref, {})
    assert info.value.problems == [
        "api.token_env: environment variable CLOUDFLARE_API_TOKEN is not set or empty"
    ]
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    config = parse_config(
        {
            "api": {"token_file": str(secret)},
            "apps": [{"account_id": "a", "app_id": "b", "meetings": ["m"]}],
        }
    )
    ref = config.token_ref(config.apps[0])
    assert read_token(ref, {}) == TOKEN
    secret.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        read_token(ref, {})
    secret.write_text("two words")
    with pytest.raises(ConfigError) as info:
        read_token(ref, {})
    assert "two" not in str(info.value)


def test_each_app_may_name_its_own_token():
    config = parse_config(
        {
            "api": {"token_env": "MAIN_TOKEN"},
            "apps": [
                {"account_id": "a", "app_id": "b", "meetings": ["m"]},
                {"account_id": "a", "app_id": "c", "meetings": ["m"], "token_env": "OTHER_TOKEN"},
                {"account_id": "d", "app_id": "e", "meetings": ["m"], "token_env": "OTHER_TOKEN"},
            ],
        }
    )
    assert read_tokens(config, {"MAIN_TOKEN": "t1", "OTHER_TOKEN": "t2"}) == {
        ("MAIN_TOKEN", None): "t1",
        ("OTHER_TOKEN", None): "t2",
    }
    with pytest.raises(ConfigError) as info:
        read_tokens(config, {})
    assert info.value.problems == [
        "api.token_env: environment variable MAIN_TOKEN is not set or empty",
        "apps[1].token_env: environment variable OTHER_TOKEN is not set or empty",
    ]


def test_discovery_config():
    config = parse_config(
        {
            "apps": [
                {
                    "account_id": "a",
                    "app_id": "b",
                    "discover": {"enabled": True, "name_regex": "^Sales", "labels": {"team": "x"}},
                }
            ]
        }
    )
    assert config.apps[0].discover.max_meetings == 5000
    assert config.targets() == {}
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "apps": [
                    {
                        "account_id": "a",
                        "app_id": "b",
                        "discover": {
                            "enabled": True,
                            "name_regex": "(",
                            "per_page": 0,
                            "exclude": ["a/b"],
                        },
                    }
                ]
            }
        )
    assert info.value.problems == [
        "apps[0].discover.per_page: must be greater than 0",
        "apps[0].discover.exclude: invalid id 'a/b': use only letters, digits, '-' and '_'",
        "apps[0].discover.name_regex: invalid regular expression '(': missing ), unterminated subpattern at position 0",
    ]


def run_check(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.process
def test_config_check_ok_and_invalid(tmp_path: Path):
    env = {"PATH": "/usr/bin:/bin", "CLOUDFLARE_API_TOKEN": TOKEN}
    ok = run_check("--config.file", str(CONFIGS / "valid-minimal.yml"), env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("config OK")
    assert ok.stdout.count("\n") == 1
    assert TOKEN not in ok.stdout + ok.stderr

    bad = run_check("--config.file", str(CONFIGS / "invalid-many-problems.yml"), env=env)
    assert bad.returncode == 1
    lines = bad.stderr.splitlines()
    assert [line.strip() for line in lines[1:]] == CASES["many-problems"]
    assert "Traceback" not in bad.stderr

    no_token = run_check(
        "--config.file", str(CONFIGS / "valid-minimal.yml"), env={"PATH": "/usr/bin:/bin"}
    )
    assert no_token.returncode == 1
    assert "CLOUDFLARE_API_TOKEN is not set" in no_token.stderr


@pytest.mark.process
def test_startup_errors_are_one_line_without_traceback(tmp_path: Path):
    env = {"PATH": "/usr/bin:/bin", "CLOUDFLARE_API_TOKEN": TOKEN}
    for path in (CONFIGS / "invalid-unknown-key.yml", tmp_path / "missing.yml"):
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "--config.file", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 1
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr


def test_app_ids_of_36_characters_are_accepted() -> None:
    """Dyte-era organisation ids were 36-character UUIDs; the published maxLength 32 is not
    trusted (issue 22, item 10): the character set is what keeps a path safe."""
    uuid = "6bf2b8be-04dd-4191-b602-1128921a306b"
    config = parse_config({"apps": [{"account_id": uuid, "app_id": uuid, "meetings": ["m1"]}]})
    assert config.apps[0].app_id == uuid


def test_new_pull_keys_have_the_contract_defaults() -> None:
    config = parse_config({"apps": [{"account_id": "a", "app_id": "b", "meetings": ["m1"]}]})
    app = config.apps[0]
    assert (
        app.recordings.enabled,
        app.recordings.interval_seconds,
        app.recordings.window_hours,
    ) == (False, 60, 24)
    assert (app.livestreams.enabled, app.livestreams.interval_seconds) == (False, 60)
    assert (app.usage.enabled, app.usage.interval_seconds) == (False, 900)
    q = app.quality
    assert (q.enabled, q.sample_fraction, q.max_reports_per_hour, q.delay_seconds) == (
        False,
        1.0,
        600,
        60,
    )
    assert (app.metrics.per_meeting, app.metrics.display_name) == (True, True)
    assert config.webhooks.public_url is None and config.webhooks.registration_check_seconds == 600


def test_quality_needs_webhooks() -> None:
    with pytest.raises(ConfigError, match=r"quality\.enabled needs webhooks\.enabled"):
        parse_config(
            {
                "apps": [
                    {
                        "account_id": "a",
                        "app_id": "b",
                        "meetings": ["m1"],
                        "quality": {"enabled": True},
                    }
                ]
            }
        )


def test_the_keys_of_the_pulls_are_acted_on_without_a_warning() -> None:
    """Every pull and cardinality switch is implemented: none is warned about any more."""
    app = {"account_id": "a", "app_id": "b", "meetings": ["m1"], "webhooks": {"enabled": True}}
    config = parse_config(
        {
            "webhooks": {"listen_address": ":9120", "public_url": "https://exporter.example.com/"},
            "apps": [
                {
                    **app,
                    "recordings": {"enabled": True},
                    "livestreams": {"enabled": True},
                    "usage": {"enabled": True},
                    "quality": {"enabled": True},
                    "metrics": {"display_name": False},
                }
            ],
        }
    )
    assert config.webhooks.public_url == "https://exporter.example.com"
    assert config.warnings() == []
