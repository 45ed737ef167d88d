"""Tests of exporter/shard.py (the partition, the budget split, the shard flags) and of the sharded
Kubernetes deployment (deploy/kubernetes/sharded), checked with the same tools as the base."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import Config, RateLimit, load_config, parse_config
from exporter.errors import ConfigError
from exporter.shard import (
    apportion,
    assign,
    describe_split,
    filter_config,
    jump_bucket,
    jump_hash,
    ordinal_from_pod,
    request_split,
    resolve_shard,
    shard_rate_limits,
    units,
)
from tests.support.api import TOKEN
from tests.support.deploy import (
    K8S,
    ROOT,
    load_yaml,
    load_yaml_all,
    parse_exporter_args,
    run,
    validate_k8s,
)
from tests.support.metrics import max_in_window
from tests.support.process import ExporterProcess, wait_for

SHARDED = K8S / "sharded"
DEFAULT_TOKEN = ("CLOUDFLARE_API_TOKEN", None)


def big_config(meetings: int = 3000, apps: int = 6, discovering: int = 24) -> Config:
    """Plain apps sharing ``meetings`` listed meetings, plus ``discovering`` discovering apps."""
    plain = [
        {
            "account_id": f"acc{a % 2}",
            "app_id": f"app{a}",
            "meetings": [f"m-{a}-{i}" for i in range(meetings // apps)],
        }
        for a in range(apps)
    ]
    disc = [
        {"account_id": "acc0", "app_id": f"disc{d}", "discover": {"enabled": True}}
        for d in range(discovering)
    ]
    return parse_config({"apps": plain + disc})


def work_of(config: Config | None) -> set[str]:
    """The unit keys a (filtered) config runs."""
    return set() if config is None else {u.key for u in units(config)}


MIXED = {
    "api": {"rate_limit": {"requests": 1000, "period_seconds": 300}},
    "apps": [
        {"account_id": "acc", "app_id": "plain1", "meetings": [f"p1-{i}" for i in range(40)]},
        {
            "account_id": "acc",
            "app_id": "plain2",
            "meetings": [{"id": f"p2-{i}", "labels": {"team": "sales"}} for i in range(25)],
        },
        {
            "account_id": "acc",
            "app_id": "disc",
            "meetings": ["d-listed-1", "d-listed-2"],
            "discover": {"enabled": True, "per_page": 50, "max_meetings": 200},
        },
        {
            "account_id": "acc",
            "app_id": "other",
            "token_env": "OTHER_TOKEN",
            "meetings": [f"o-{i}" for i in range(12)],
        },
    ],
}


# -- the hash --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "buckets", "bucket"),
    # Reference values of other implementations of the algorithm (ClickHouse's
    # jumpConsistentHash, the paper's C++ code): the same answers for the same 64-bit keys.
    [
        (1, 1, 0),
        (42, 57, 43),
        (256, 1024, 520),
        (3735883980, 1, 0),
        (3735883980, 666, 361),
        (16045690984833335023, 255, 237),
    ],
)
def test_jump_bucket_matches_the_reference(key: int, buckets: int, bucket: int) -> None:
    assert jump_bucket(key, buckets) == bucket


def test_jump_hash_range_and_bad_buckets() -> None:
    keys = [f"acc/app/m{i}" for i in range(500)]
    for buckets in (1, 2, 7, 100):
        assert {jump_hash(k, buckets) for k in keys} <= set(range(buckets))
    assert {jump_hash(k, 1) for k in keys} == {0}
    with pytest.raises(ValueError, match="at least 1"):
        jump_hash("x", 0)


@pytest.mark.process
def test_jump_hash_is_the_same_in_another_process() -> None:
    """Python's hash() of a str is salted per process: the partition must not depend on it."""
    keys = [f"acc/app/meeting-{i}" for i in range(300)]
    code = (
        "import json, sys\n"
        "from exporter.shard import jump_hash\n"
        "keys = json.load(sys.stdin)\n"
        "print(json.dumps([[jump_hash(k, m) for m in range(1, 9)] for k in keys]))\n"
    )
    env = {"PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(keys),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    here = [[jump_hash(k, m) for m in range(1, 9)] for k in keys]
    assert json.loads(out.stdout) == here


# -- the partition ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big() -> Config:
    return big_config()


def test_partition_is_complete_and_disjoint(big: Config) -> None:
    everything = work_of(big)
    assert len(everything) == 3000 + 24
    for total in range(1, 9):
        parts = [work_of(filter_config(big, shard, total)) for shard in range(total)]
        assert sum(len(p) for p in parts) == len(everything), f"M={total}: a unit twice"
        assert set().union(*parts) == everything, f"M={total}: a unit lost"
        for shard, part in enumerate(parts):  # roughly even: within 20 % of the mean
            assert abs(len(part) - len(everything) / total) < 0.2 * len(everything) / total, (
                f"M={total}, shard {shard}: {len(part)} units"
            )


def test_partition_is_stable_across_calls(big: Config) -> None:
    first = {u.key: s for s, own in assign(big, 5).items() for u in own}
    again = {u.key: s for s, own in assign(big_config(), 5).items() for u in own}
    assert first == again


@pytest.mark.parametrize("total", range(1, 8))
def test_adding_a_shard_moves_about_one_in_m_plus_one(big: Config, total: int) -> None:
    before = {u.key: s for s, own in assign(big, total).items() for u in own}
    after = {u.key: s for s, own in assign(big, total + 1).items() for u in own}
    moved = [k for k in before if before[k] != after[k]]
    assert {after[k] for k in moved} <= {total}, "units move only to the new shard"
    expected = 1 / (total + 1)
    assert abs(len(moved) / len(before) - expected) < 0.03, (len(moved), expected)


def test_filter_config_on_a_mixed_config() -> None:
    config = parse_config(MIXED)
    total = 3
    shards = [filter_config(config, s, total) for s in range(total)]
    assert all(c is not None for c in shards)
    plain_meetings: Counter[tuple[str, str]] = Counter()
    disc_holders = []
    for shard, part in enumerate(shards):
        assert part is not None
        Config.model_validate(part.model_dump())  # every filtered config is a valid config
        assert part.api == config.api and part.poll == config.poll
        for app in part.apps:
            original = next(a for a in config.apps if a.key == app.key)
            assert part.token_ref(app).source == config.token_ref(original).source
            if app.discover.enabled:
                assert app == original, "a discovering app goes whole, listed meetings included"
                disc_holders.append(shard)
            else:
                assert app.meetings, "no app is left without meetings"
                assert app.token_env == original.token_env
                by_id = {m.id: m for m in original.meetings}
                for m in app.meetings:
                    assert by_id[m.id] == m, "static labels are kept"
                    plain_meetings[app.app_id, m.id] += 1
    assert len(disc_holders) == 1
    expected = {(a["app_id"], m) for a in MIXED["apps"] if "discover" not in a for m in _ids(a)}
    assert set(plain_meetings) == expected and set(plain_meetings.values()) == {1}
    # A shard exports only its own: the union of the targets is the unsharded config's.
    union: dict[Any, Any] = {}
    for part in shards:
        assert part is not None
        targets = part.targets()
        assert not union.keys() & targets.keys()
        union |= targets
    assert union == config.targets()


def _ids(app: dict[str, Any]) -> list[str]:
    return [m if isinstance(m, str) else m["id"] for m in app["meetings"]]


def test_filter_config_with_one_shard_is_the_config() -> None:
    config = parse_config(MIXED)
    assert filter_config(config, 0, 1) is config


def test_a_shard_without_work_gets_none() -> None:
    config = parse_config({"apps": [{"account_id": "a", "app_id": "b", "meetings": ["only"]}]})
    parts = [filter_config(config, s, 4) for s in range(4)]
    assert sum(p is not None for p in parts) == 1
    assert "no work" in describe_split(config, 4)


def test_filter_config_rejects_a_shard_out_of_range() -> None:
    config = parse_config(MIXED)
    for shard, total in ((3, 3), (-1, 3), (0, 0)):
        with pytest.raises(ValueError, match="not in"):
            filter_config(config, shard, total)


# -- the budget ------------------------------------------------------------------------------------


@pytest.mark.parametrize("total", range(1, 9))
def test_request_split_fits_the_budget(big: Config, total: int) -> None:
    for config in (big, parse_config(MIXED)):
        split = request_split(config, total)
        budget = config.api.rate_limit.requests
        tokens = {token for token, _ in split}
        for token in tokens:
            mine = {s: n for (t, s), n in split.items() if t == token}
            assert sum(mine.values()) == budget, "whole requests, the whole budget, no more"
            assert all(n >= 1 for n in mine.values())
        used = {(u.token, s) for s, own in assign(config, total).items() for u in own}
        assert set(split) == used, "exactly the shards that use a token get a part of it"


def test_budget_follows_demand() -> None:
    config = parse_config(MIXED)
    split = request_split(config, 1)
    assert split == {(DEFAULT_TOKEN, 0): 1000, (("OTHER_TOKEN", None), 0): 1000}
    split = request_split(config, 3)
    assigned = assign(config, 3)
    demand = {
        s: sum(u.demand for u in own if u.token == DEFAULT_TOKEN) for s, own in assigned.items()
    }
    # The discovering app: ceil((200 + 2) / 50) = 5 pages and 2 listed meetings = 7 per interval.
    assert next(u.demand for u in units(config) if u.meeting is None) == 7
    assert sum(demand.values()) == 40 + 25 + 7
    for s, d in demand.items():  # proportional, within the one request each shard gets first
        assert abs(split[DEFAULT_TOKEN, s] - 1000 * d / 72) <= 1 + 1e-9


def test_apportion_is_exact_and_deterministic() -> None:
    assert apportion(10, {0: 1, 1: 1, 2: 1}) == {0: 4, 1: 3, 2: 3}
    assert apportion(3, {0: 1000, 1: 1, 2: 1}) == {0: 1, 1: 1, 2: 1}
    assert apportion(1200, {0: 3, 1: 1}) == {0: 900, 1: 300}
    with pytest.raises(ValueError):
        apportion(2, {0: 1, 1: 1, 2: 1})


def test_a_budget_smaller_than_the_shards_is_a_config_error() -> None:
    data = {
        "api": {"rate_limit": {"requests": 2}},
        "apps": [{"account_id": "a", "app_id": "b", "meetings": [f"m{i}" for i in range(50)]}],
    }
    with pytest.raises(ConfigError, match=r"api\.rate_limit\.requests.*--total-shards"):
        request_split(parse_config(data), 3)


def test_shard_rate_limits_are_what_a_shard_applies() -> None:
    config = parse_config(
        MIXED | {"api": {"rate_limit": {"requests": 1000, "reserve_fraction": 0.1}}}
    )
    split = request_split(config, 3)
    total_per_token: Counter[Any] = Counter()
    for shard in range(3):
        limits = shard_rate_limits(config, shard, 3)
        for token, limit in limits.items():
            assert isinstance(limit, RateLimit)
            assert limit.period_seconds == config.api.rate_limit.period_seconds
            assert limit.reserve_fraction == 0.1
            assert limit.requests == split[token, shard]
            total_per_token[token] += limit.requests
    assert set(total_per_token.values()) == {1000}
    whole = shard_rate_limits(config, 0, 1)
    assert set(whole.values()) == {config.api.rate_limit}


# -- the shard flags -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ordinal"),
    [("realtimekit-exporter-0", 0), ("realtimekit-exporter-12", 12), ("a-b-3", 3), ("x-10", 10)],
)
def test_ordinal_from_pod(name: str, ordinal: int) -> None:
    assert ordinal_from_pod(name) == ordinal


@pytest.mark.parametrize("name", ["realtimekit-exporter", "exporter-", "-3", "x-03", "x-3a", ""])
def test_ordinal_from_pod_rejects(name: str) -> None:
    with pytest.raises(ValueError, match=r"does not end in -<ordinal>") as err:
        ordinal_from_pod(name)
    assert repr(name) in str(err.value)


@pytest.mark.parametrize(
    ("shard", "total", "pod", "expected"),
    [
        (None, 1, None, 0),
        (0, 1, None, 0),
        (2, 3, None, 2),
        (None, 3, "realtimekit-exporter-1", 1),
        (0, 3, "realtimekit-exporter-2", 0),  # an explicit --shard wins
        (None, 1, "not-a-statefulset-pod", 0),  # unsharded: the pod name does not matter
    ],
)
def test_resolve_shard(shard: int | None, total: int, pod: str | None, expected: int) -> None:
    assert resolve_shard(shard, total, pod) == expected


@pytest.mark.parametrize(
    ("shard", "total", "pod", "names"),
    [
        (3, 3, None, ["--shard", "--total-shards=3"]),
        (-1, 3, None, ["--shard"]),
        (1, 1, None, ["--shard", "--total-shards=1"]),
        (None, 3, None, ["--shard", "--pod", "POD_NAME"]),
        (None, 3, "realtimekit-exporter-3", ["--pod", "--total-shards=3", "0…2"]),
        (None, 3, "realtimekit-exporter", ["--pod", "-<ordinal>"]),
        (None, 0, None, ["--total-shards"]),
    ],
)
def test_resolve_shard_errors_name_the_flag(
    shard: int | None, total: int, pod: str | None, names: list[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_shard(shard, total, pod)
    (problem,) = err.value.problems
    assert problem.startswith(names[0] + ":"), problem
    for name in names:
        assert name in problem


# -- what --config.check prints --------------------------------------------------------------------


def test_describe_split_shows_units_and_budget_per_shard(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    data = json.loads(json.dumps(MIXED))
    data["apps"][3] = data["apps"][3] | {"token_env": None, "token_file": str(secret)}
    config = parse_config(data)
    text = describe_split(config, 3)
    lines = text.splitlines()
    assert lines[0].startswith("3 shards, 78 units (77 listed meetings, 1 discovering app)")
    split = request_split(config, 3)
    for shard, own in assign(config, 3).items():
        start = lines.index(next(line for line in lines if line.startswith(f"shard {shard}:")))
        block = lines[start : start + 3]
        plain = sum(1 for u in own if u.meeting is not None)
        if plain:
            assert f"{plain} meeting" in block[0]
        if any(u.meeting is None for u in own):
            assert "acc/disc" in block[0]
        for (token, s), n in split.items():
            if s == shard:
                name = "$CLOUDFLARE_API_TOKEN" if token == DEFAULT_TOKEN else str(secret)
                assert any(
                    f"token {name}: {n} of 1000 requests per 300s" in line for line in block
                ), block
    assert text.count(str(secret)) == len({s for (t, s) in split if t == (None, str(secret))})


# -- the sharded Kubernetes deployment --------------------------------------------------------------


def sharded_docs() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: load_yaml_all(path)
        for path in sorted(SHARDED.glob("*.yaml"))
        if path.name not in ("kustomization.yaml", "config.yaml")
    }


def sharded_object(kind: str) -> dict[str, Any]:
    (found,) = [d for docs in sharded_docs().values() for d in docs if d["kind"] == kind]
    return found


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(c)


def total_shards_arg(args: list[str]) -> int:
    (value,) = [a.removeprefix("--total-shards=") for a in args if a.startswith("--total-shards")]
    return int(value)


def test_kubernetes_sharded_manifests_validate() -> None:
    docs = sharded_docs()
    assert set(docs) == {"statefulset.yaml", "service.yaml", "servicemonitor.yaml"}
    for name, objects in docs.items():
        validate_k8s(objects, f"sharded/{name}")


def test_kubernetes_sharded_pod_is_the_base_pod_plus_the_shard() -> None:
    """statefulset.yaml repeats the base Deployment's pod spec (kustomize cannot share it):
    the only differences allowed are --total-shards and POD_NAME."""
    (deployment,) = [d for d in load_yaml_all(K8S / "deployment.yaml") if d["kind"] == "Deployment"]
    statefulset = sharded_object("StatefulSet")
    base, sharded = container(deployment), container(statefulset)
    assert sharded["args"] == [*base["args"], f"--total-shards={total_shards_arg(sharded['args'])}"]
    (pod_name,) = [e for e in sharded["env"] if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert [e for e in sharded["env"] if e["name"] != "POD_NAME"] == base["env"]
    strip = {"args", "env"}
    assert {k: v for k, v in sharded.items() if k not in strip} == {
        k: v for k, v in base.items() if k not in strip
    }
    pod = {k: v for k, v in statefulset["spec"]["template"]["spec"].items() if k != "containers"}
    base_pod = deployment["spec"]["template"]["spec"]
    assert pod == {k: v for k, v in base_pod.items() if k != "containers"}
    assert statefulset["spec"]["template"]["metadata"] == deployment["spec"]["template"]["metadata"]


def test_kubernetes_sharded_objects_fit_together() -> None:
    statefulset, service = sharded_object("StatefulSet"), sharded_object("Service")
    monitor = sharded_object("ServiceMonitor")
    spec = statefulset["spec"]
    assert spec["replicas"] == total_shards_arg(container(statefulset)["args"]) == 3
    assert "--shard" not in " ".join(container(statefulset)["args"]).replace("--total-shards", "")
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None", "a StatefulSet's governing Service is headless"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"] for p in container(statefulset)["ports"]}
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {p["targetPort"] for p in service_ports.values()} <= ports
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    base_service = load_yaml(K8S / "service.yaml")
    assert not (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= base_service["metadata"]["labels"].items()
    ), "the ServiceMonitor must not also scrape the base's Service (every shard twice)"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in service_ports
    relabels = endpoint["relabelings"]
    assert {"action": "replace", "targetLabel": "job", "replacement": "realtimekit"} in relabels


def test_kubernetes_sharded_command_line_is_valid() -> None:
    from exporter.cli import build_parser

    args = container(sharded_object("StatefulSet"))["args"]
    if "--total-shards" not in build_parser()._option_string_actions:
        pytest.skip("exporter.cli has no --total-shards yet (exporter.shard is not wired in)")
    parsed = parse_exporter_args(args)
    assert parsed.config_file == "/etc/realtimekit-exporter/config.yaml"


def test_kubernetes_sharded_config_is_valid() -> None:
    config = load_config(SHARDED / "config.yaml")
    assert any(app.discover.enabled for app in config.apps)
    text = describe_split(config, 3)
    assert text.startswith("3 shards, ")
    api = load_yaml(SHARDED / "config.yaml")["api"]
    env = {e["name"] for e in container(sharded_object("StatefulSet"))["env"] if "valueFrom" in e}
    assert api.get("token_env", "CLOUDFLARE_API_TOKEN") in env


@pytest.mark.process
def test_kustomize_build_sharded() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # as in test_deploy: not a Debian package, never required
        pytest.skip("kubectl is not installed (it ships kustomize)")
    result = run([kubectl, "kustomize", str(SHARDED)], timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert sorted(by_kind) == ["ConfigMap", "Service", "ServiceMonitor", "StatefulSet"]
    assert len(docs) == 4
    assert {d["metadata"].get("namespace") for d in docs} == {"monitoring"}
    config_map = by_kind["ConfigMap"]
    assert config_map["data"]["config.yaml"] == (SHARDED / "config.yaml").read_text()
    volumes = by_kind["StatefulSet"]["spec"]["template"]["spec"]["volumes"]
    assert config_map["metadata"]["name"] in {v.get("configMap", {}).get("name") for v in volumes}
    validate_k8s(docs, "kubectl kustomize sharded")


# --- three real shard processes against one simulator enforcing the token's budget -------------

PER_MEETING = (
    "realtimekit_up",
    "realtimekit_session_active",
    "realtimekit_session_live_participants",
    "realtimekit_session_info",
)


def _fleet(budget: tuple[int, float]) -> tuple[Any, dict[str, Any]]:
    """A simulator (seeded: the same ids every time) with two plain apps and one discovering
    app, and the config that watches them."""
    from exporter.simulator import Simulator

    sim = Simulator(token=TOKEN, meetings=8, auto=False, seed=11, rate_limit=budget)
    plain_b = sim.add_app("023e105f4ecef8ad9ca31a8372d0c353", "appb", 8)
    discovered = sim.add_app("023e105f4ecef8ad9ca31a8372d0c353", "appc", 6)
    for i, meeting in enumerate([*sim.meeting_ids[:4], *plain_b[:3], *discovered]):
        sim.set_participants(meeting, i + 1)
    sim.start("127.0.0.1", 0)
    account = "023e105f4ecef8ad9ca31a8372d0c353"
    config = {
        "api": {
            "base_url": sim.base_url,
            "timeout_seconds": 2,
            "rate_limit": {"requests": budget[0], "period_seconds": budget[1]},
        },
        # The budget stretches the interval (to ~4 s unsharded): values must outlive it.
        "poll": {"interval_seconds": 1, "stale_after_seconds": 60},
        "apps": [
            {"account_id": account, "app_id": "6f0a8a2c3b8e4f62a1d2c3b4e5f60718",
             "meetings": sim.meeting_ids[:8]},
            {"account_id": account, "app_id": "appb", "meetings": plain_b},
            {"account_id": account, "app_id": "appc", "discover": {"enabled": True}},
        ],
    }  # fmt: skip
    return sim, config


def _series(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> set[Any]:
    return {(name, labels) for (name, labels) in samples if name in PER_MEETING}


@pytest.mark.process
def test_three_shards_export_the_union_once_and_stay_inside_the_budget(tmp_path: Path):

    budget = (40, 10.0)
    sim, config = _fleet(budget)
    single = ExporterProcess(config, _dir(tmp_path, "single"))
    try:
        # 16 listed meetings (up, active, participants; info for the 7 live ones) and 6
        # discovered live ones (all four).
        wait_for(lambda: len(_series(single.scrape())) == 16 * 3 + 7 + 6 * 4, timeout=40)
        whole = _series(single.scrape())
    finally:
        single.stop()
        sim.stop()

    sim, config = _fleet(budget)  # a fresh budget window for the sharded run
    shards = [
        ExporterProcess(config, _dir(tmp_path, f"s{i}"), "--total-shards", "3", "--shard", str(i))
        for i in range(3)
    ]
    try:

        def union_complete() -> bool:
            missing = whole - set().union(*(_series(s.scrape()) for s in shards))
            assert not missing, sorted(missing)[:5]
            return True

        wait_for(union_complete, timeout=40)
        scraped = [s.scrape() for s in shards]
        parts = [_series(samples) for samples in scraped]
        assert set().union(*parts) == whole
        assert sum(map(len, parts)) == len(whole)  # no series on two shards
        assert [
            samples[("realtimekit_exporter_shard_ordinal", frozenset())] for samples in scraped
        ] == [0, 1, 2]
        assert {
            samples[("realtimekit_exporter_total_shards", frozenset())] for samples in scraped
        } == {3}
        assert all(parts), "every shard got some of the work"
        times = [t for t, _, _ in sim.request_log()]
        assert 429 not in sim.status_counts()
        assert max_in_window(times, budget[1]) <= budget[0]
        assert all("Shard " in s.log() for s in shards)
    finally:
        for s in shards:
            s.stop()
        sim.stop()


def _dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path
