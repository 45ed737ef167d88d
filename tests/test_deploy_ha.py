"""Tests of the high-availability deployments: the Kubernetes variant (deploy/kubernetes/ha: two
exporter replicas, a small Redis, a PodDisruptionBudget) and the compose ``ha`` profile (redis,
exporter-a, exporter-b), checked with the tools of tests/test_deploy.py; the Redis commands and
the exporters' configs of both are also run for real (Debian's redis-server, the simulator and
two exporter processes on 127.0.0.1)."""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support import deploy
from tests.support.api import TOKEN
from tests.support.deploy import (
    COMPOSE,
    DEPLOY,
    K8S,
    PROM_DIR,
    ROOT,
    compose,
    load_yaml,
    load_yaml_all,
    run,
    validate_k8s,
)
from tests.support.metrics import value
from tests.support.ports import free_port
from tests.support.process import ExporterProcess, wait_for
from tests.support.redis import RedisServer, local_redis_args, redis_server_path
from tests.support.tools import require_binary

HA = K8S / "ha"
HA_CONFIG = HA / "config.yaml"
COMPOSE_HA_CONFIG = DEPLOY / "compose" / "config-ha.yaml"
HA_SERVICES = ("simulator-ha", "redis", "exporter-a", "exporter-b")
SECRETS_DIR = "/run/secrets"  # where compose mounts a service's secrets
PASSWORD = "ha-test-PASS-7c1e9d0b42"
REDIS_ARG = "$(REDIS_PASSWORD)"  # Kubernetes expands $(VAR) in args from the container's env


# -- Kubernetes: the manifests ------------------------------------------------------------------


def ha_docs() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: load_yaml_all(path)
        for path in sorted(HA.glob("*.yaml"))
        if path.name not in ("kustomization.yaml", "config.yaml")
    }


def ha_object(kind: str, name: str) -> dict[str, Any]:
    found = [
        d
        for docs in ha_docs().values()
        for d in docs
        if d["kind"] == kind and d["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def exporter_deployment() -> dict[str, Any]:
    return ha_object("Deployment", "realtimekit-exporter")


def redis_deployment() -> dict[str, Any]:
    return ha_object("Deployment", "realtimekit-redis")


def pod_of(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container_of(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_of(workload)["containers"]
    return dict(container)


def env_secret(container: dict[str, Any], name: str) -> tuple[str, str]:
    """(Secret name, key) an environment variable of a container comes from."""
    (var,) = [e for e in container["env"] if e["name"] == name]
    ref = var["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def password_volume() -> tuple[str, str, str]:
    """(Secret name, key, path in the container) of the exporter's Redis password file."""
    pod, container = pod_of(exporter_deployment()), container_of(exporter_deployment())
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    (item,) = volume["secret"]["items"]
    path = posixpath.join(mount["mountPath"], item["path"])
    return volume["secret"]["secretName"], item["key"], path


def assert_hardened(workload: dict[str, Any]) -> None:
    where = workload["metadata"]["name"]
    pod, container = pod_of(workload), container_of(workload)
    assert pod["automountServiceAccountToken"] is False, where
    assert pod["securityContext"]["runAsNonRoot"] is True, where
    assert pod["securityContext"]["runAsUser"] != 0, where
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True, where
    assert sc["allowPrivilegeEscalation"] is False, where
    assert sc["capabilities"]["drop"] == ["ALL"], where
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{where}: {kind}"
    for probe in ("livenessProbe", "readinessProbe"):
        assert probe in container, f"{where}: no {probe}"


def test_kubernetes_ha_manifests_validate() -> None:
    docs = ha_docs()
    assert set(docs) == {
        "deployment.yaml",
        "pdb.yaml",
        "service.yaml",
        "servicemonitor.yaml",
        "redis.yaml",
        "secret.example.yaml",
    }
    for name, objects in docs.items():
        assert objects, f"ha/{name} is empty"
        validate_k8s(objects, f"ha/{name}")


def test_kubernetes_ha_pod_is_the_base_pod_plus_the_redis_password() -> None:
    """deployment.yaml repeats the base Deployment's pod (kustomize cannot share it): the only
    differences allowed are the password's volume and mount, fsGroup and the node spread."""
    (base,) = [d for d in load_yaml_all(K8S / "deployment.yaml") if d["kind"] == "Deployment"]
    ha = exporter_deployment()
    base_c, ha_c = container_of(base), container_of(ha)
    secret_name, _, _ = password_volume()
    (volume,) = [v for v in pod_of(ha)["volumes"] if v.get("secret", {}).get("secretName")]
    assert volume["secret"]["secretName"] == secret_name
    assert [m for m in ha_c["volumeMounts"] if m["name"] != volume["name"]] == base_c[
        "volumeMounts"
    ]
    assert {k: v for k, v in ha_c.items() if k != "volumeMounts"} == {
        k: v for k, v in base_c.items() if k != "volumeMounts"
    }
    ha_pod, base_pod = pod_of(ha), pod_of(base)
    assert [v for v in ha_pod["volumes"] if v is not volume] == base_pod["volumes"]
    sc = dict(ha_pod["securityContext"])
    assert sc.pop("fsGroup") == sc["runAsGroup"]
    assert sc == base_pod["securityContext"]
    assert oct(volume["secret"]["defaultMode"]) == "0o440", "the group reads it, not the world"
    added = {"volumes", "securityContext", "containers", "topologySpreadConstraints"}
    assert {k: v for k, v in ha_pod.items() if k not in added} == {
        k: v for k, v in base_pod.items() if k not in added
    }
    assert ha["spec"]["template"]["metadata"] == base["spec"]["template"]["metadata"]


def test_kubernetes_ha_replicas_budget_and_spread() -> None:
    deployment = exporter_deployment()
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    # Start the new pod before stopping an old one: the budget is shared, a third pod is free.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod_labels = spec["template"]["metadata"]["labels"]
    pod = pod_of(deployment)
    assert "affinity" not in pod, "a preferred spread, no (anti-)affinity rule"
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    text = (HA / "deployment.yaml").read_text(encoding="utf-8")
    assert re.search(r"#.*anti-affinity", text), "the comment on why no anti-affinity is missing"

    pdb = ha_object("PodDisruptionBudget", "realtimekit-exporter")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    redis_labels = redis_deployment()["spec"]["template"]["metadata"]["labels"]
    assert not pdb["spec"]["selector"]["matchLabels"].items() <= redis_labels.items()
    assert_hardened(deployment)


def test_kubernetes_ha_redis() -> None:
    redis = redis_deployment()
    assert redis["spec"]["replicas"] == 1
    assert redis["spec"]["strategy"]["type"] == "Recreate"
    assert_hardened(redis)
    container = container_of(redis)
    assert container["image"] == "redis:7-alpine"
    args = container["args"]
    assert args[0] == "redis-server"
    assert args[args.index("--requirepass") + 1] == REDIS_ARG
    # No persistence.
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"
    assert not any(v.get("persistentVolumeClaim") for v in pod_of(redis)["volumes"])
    # The password Redis requires is the exporters' password file.
    secret_name, key, _ = password_volume()
    assert env_secret(container, "REDIS_PASSWORD") == (secret_name, key)
    assert env_secret(container, "REDISCLI_AUTH") == (secret_name, key)
    (secret,) = load_yaml_all(HA / "secret.example.yaml")
    assert secret["metadata"]["name"] == secret_name and key in secret["stringData"]
    # The Service the config's redis_url names, on the pods' port.
    service = ha_object("Service", "realtimekit-redis")
    pod_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[port["targetPort"]] == 6379
    url = urlsplit(load_yaml(HA_CONFIG)["coordination"]["redis_url"])
    assert (url.scheme, url.hostname, url.port) == ("redis", service["metadata"]["name"], 6379)
    assert port["port"] == url.port


def test_kubernetes_ha_objects_fit_together() -> None:
    deployment, service = exporter_deployment(), ha_object("Service", "realtimekit-exporter")
    monitor = ha_object("ServiceMonitor", "realtimekit-exporter")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    redis_service = ha_object("Service", "realtimekit-redis")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert not selector.items() <= redis_service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    relabels = endpoint["relabelings"]
    assert {"action": "replace", "targetLabel": "job", "replacement": "realtimekit"} in relabels
    # The config the pods read is the ConfigMap kustomize generates from config.yaml.
    (config_volume,) = [v for v in pod_of(deployment)["volumes"] if "configMap" in v]
    (generator,) = load_yaml(HA / "kustomization.yaml")["configMapGenerator"]
    assert config_volume["configMap"]["name"] == generator["name"]
    assert generator["files"] == ["config.yaml"]
    # coordination.password_file is where the Secret is mounted.
    _, _, path = password_volume()
    assert load_yaml(HA_CONFIG)["coordination"]["password_file"] == path


@pytest.mark.process
def test_kustomize_build_ha() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # as in test_deploy: not a Debian package, never required
        pytest.skip("kubectl is not installed (it ships kustomize)")
    result = run([kubectl, "kustomize", str(HA)], timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    shipped = ["ConfigMap", "PodDisruptionBudget", "ServiceMonitor"] + 2 * ["Deployment", "Service"]
    assert kinds == sorted(shipped), "the kustomization must not ship the example Secret"
    assert {d["metadata"].get("namespace") for d in docs} == {"monitoring"}
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config_map["data"]["config.yaml"] == HA_CONFIG.read_text(encoding="utf-8")
    (exporter,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("exporter")
    ]
    volumes = pod_of(exporter)["volumes"]
    assert config_map["metadata"]["name"] in {v.get("configMap", {}).get("name") for v in volumes}
    validate_k8s(docs, "kubectl kustomize ha")


# -- the configs pass the real --config.check ------------------------------------------------------


def with_password_file(config_path: Path, tmp: Path) -> tuple[Path, Path]:
    """A copy of a config whose coordination.password_file points at a local file holding
    PASSWORD (the only change); returns (config, password file)."""
    password_file = tmp / "redis-password"
    password_file.write_text(PASSWORD + "\n")
    data = load_yaml(config_path)
    data["coordination"]["password_file"] = str(password_file)
    path = tmp / config_path.name
    path.write_text(yaml.safe_dump(data))
    return path, password_file


def config_check(path: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CLOUDFLARE_API_TOKEN": "t-0123"}
    cmd = [sys.executable, "-m", "exporter", "--config.file", str(path), "--config.check"]
    return run(cmd, cwd=ROOT, env=env)


@pytest.mark.parametrize("config", [HA_CONFIG, COMPOSE_HA_CONFIG], ids=["kubernetes", "compose"])
@pytest.mark.process
def test_ha_config_passes_config_check(config: Path, tmp_path: Path) -> None:
    block = load_yaml(config)["coordination"]
    assert set(block) == {"redis_url", "key_prefix", "lease_seconds", "password_file"}
    # As shipped, the check reads the password file at its in-container path: it is absent here,
    # and the check says so (so it does read it).
    shipped = config_check(config)
    assert shipped.returncode == 1, shipped.stdout + shipped.stderr
    assert "coordination.password_file" in shipped.stderr
    assert block["password_file"] in shipped.stderr
    local, _ = with_password_file(config, tmp_path)
    result = config_check(local)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"config OK: {local}: 1 app(s)")
    assert PASSWORD not in result.stdout + result.stderr


# -- compose: the ha profile -----------------------------------------------------------------------


def secret_file(name: str) -> Path:
    """Host file of a compose secret (``${VAR:-default}`` taken at its default)."""
    source = compose()["secrets"][name]["file"]
    match = re.fullmatch(r"\$\{\w+:-(.+)\}", source)
    return (COMPOSE.parent / (match.group(1) if match else source)).resolve()


def flags(command: list[str]) -> dict[str, str]:
    return dict(zip(command[::2], command[1::2], strict=False))


def test_compose_ha_profile_structure() -> None:
    services = compose()["services"]
    for name, service in services.items():
        expected = ["ha"] if name in HA_SERVICES else None
        assert service.get("profiles") == expected, f"{name}: profiles {service.get('profiles')}"
    for name in HA_SERVICES:
        for key in ("read_only", "cap_drop", "security_opt"):
            assert key in services[name], f"{name}: not hardened ({key})"
        assert services[name]["restart"] == "unless-stopped"
    assert services["redis"]["image"] == "redis:7-alpine"
    assert services["redis"]["user"] != "0" and not services["redis"]["user"].startswith("0:")
    assert services["simulator-ha"]["image"] == services["exporter"]["image"]
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert len({p.rsplit(":", 1)[0] for p in ports}) == len(ports), "host ports must differ"

    sim = services["simulator-ha"]
    sim_args = flags(sim["command"])
    from exporter.simulator import Simulator, _parser

    _parser().parse_args(sim["command"])  # the simulator accepts the flags (exits otherwise)
    config = load_yaml(COMPOSE_HA_CONFIG)
    (app,) = config["apps"]
    seeded = Simulator(
        token="x",
        meetings=int(sim_args["--meetings"]),
        seed=int(sim_args["--seed"]),
        app_id=sim_args["--app-id"],
    )
    assert (app["account_id"], app["app_id"]) == (seeded.account_id, sim_args["--app-id"])
    assert [m if isinstance(m, str) else m["id"] for m in app["meetings"]] == seeded.meeting_ids, (
        "deploy/compose/config-ha.yaml must list simulator-ha's meetings (--seed/--meetings)"
    )
    (base_app,) = load_yaml(DEPLOY / "compose" / "config.yaml")["apps"]
    assert base_app["app_id"] != app["app_id"], "the single exporter and the pair share no meeting"
    listen_port = sim_args["--listen"].rpartition(":")[2]
    assert config["api"]["base_url"] == f"http://simulator-ha:{listen_port}/client/v4"
    requests, period = sim_args["--rate-limit"].split("/")
    budget = config["api"]["rate_limit"]
    assert budget["requests"] / budget["period_seconds"] <= int(requests) / float(period)
    assert urlsplit(config["coordination"]["redis_url"]).hostname == "redis"

    for name in ("exporter-a", "exporter-b"):
        exporter = services[name]
        assert "entrypoint" not in exporter and "command" not in exporter, name
        assert deploy.compose_mounts(exporter)[deploy.CONFIG_PATH_IN_IMAGE] == COMPOSE_HA_CONFIG, (
            name
        )
        assert exporter["secrets"] == ["redis-password"], name
        assert config["coordination"]["password_file"] == f"{SECRETS_DIR}/redis-password"
        assert set(exporter["environment"]) == {"CLOUDFLARE_API_TOKEN"}, name
        assert (
            exporter["environment"]["CLOUDFLARE_API_TOKEN"]
            == sim["environment"]["CLOUDFLARE_API_TOKEN"]
        )
        (port,) = exporter["ports"]
        assert port.startswith("127.0.0.1:") and port.endswith(f":{deploy.DEFAULT_PORT}"), name
        assert exporter["depends_on"] == {
            "simulator-ha": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }, name
    assert services["redis"]["secrets"] == ["redis-password"]
    assert f"{SECRETS_DIR}/redis-password" in " ".join(services["redis"]["command"])
    assert secret_file("redis-password").is_file()


def test_compose_prometheus_scrapes_the_ha_exporters() -> None:
    """The stack's Prometheus (deploy/compose/prometheus.yml, the base one plus discovery)
    must find exporter-a and exporter-b in its "realtimekit" job when the profile runs."""
    (job,) = [
        j for j in load_yaml(DEPLOY / "compose" / "prometheus.yml")["scrape_configs"]
        if j["job_name"] == "realtimekit"
    ]  # fmt: skip
    names = {t.rpartition(":")[0] for sc in job.get("static_configs", []) for t in sc["targets"]}
    names |= {n for sc in job.get("dns_sd_configs", []) for n in sc.get("names", [])}
    if not {"exporter-a", "exporter-b"} & names:
        pytest.skip(
            "deploy/prometheus/prometheus.yml does not scrape the ha profile yet: add"
            " PROMETHEUS_HA_SCRAPE (tests/test_deploy_ha.py) to its realtimekit job"
        )
    assert {"exporter-a", "exporter-b"} <= names


#: The change deploy/prometheus/prometheus.yml needs so that the stack's Prometheus scrapes the
#: ha profile's exporters: DNS discovery finds them while the profile runs, and nothing (no
#: failing target, no ExporterDown alert) while it does not.
PROMETHEUS_HA_SCRAPE: dict[str, Any] = {
    "dns_sd_configs": [
        {"names": ["exporter-a", "exporter-b"], "type": "A", "port": deploy.DEFAULT_PORT}
    ],
    "relabel_configs": [
        {
            "source_labels": ["__meta_dns_name"],
            "regex": "(.+)",
            "target_label": "instance",
            "replacement": f"${{1}}:{deploy.DEFAULT_PORT}",
        }
    ],
}


@pytest.mark.process
def test_proposed_prometheus_ha_scrape_is_valid(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    config = load_yaml(PROM_DIR / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "realtimekit"]
    job.update(PROMETHEUS_HA_SCRAPE)
    config["rule_files"] = [str(PROM_DIR / f) for f in config["rule_files"]]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = run([promtool, "check", "config", "--lint=all", "--lint-fatal", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


# -- no password in any config the exporter reads --------------------------------------------------


def exporter_configs() -> dict[str, str]:
    """Every config text an exporter of the deploy files reads."""
    texts = {
        str(p.relative_to(ROOT)): p.read_text(encoding="utf-8")
        for p in [HA_CONFIG, COMPOSE_HA_CONFIG, DEPLOY / "compose" / "config.yaml"]
    }
    texts["kubernetes/config.yaml"] = (K8S / "config.yaml").read_text(encoding="utf-8")
    return texts


def test_no_password_literal_in_exporter_configs() -> None:
    demo = secret_file("redis-password").read_text(encoding="utf-8").strip()
    (secret,) = load_yaml_all(HA / "secret.example.yaml")
    placeholder = secret["stringData"]["password"]
    assert demo and placeholder
    for where, text in exporter_configs().items():
        for literal in (demo, placeholder):
            assert literal not in text, f"{where} holds a password"
        block = yaml.safe_load(text).get("coordination") or {}
        assert urlsplit(block.get("redis_url", "redis://h")).password is None, where
        assert {k for k in block if "password" in k} <= {"password_file", "password_env"}, where
    # Nor the manifests and the compose file: only the example Secret and the secret file.
    for path in [COMPOSE, *sorted(HA.glob("*.yaml"))]:
        if path.name != "secret.example.yaml":
            text = path.read_text(encoding="utf-8")
            assert demo not in text and placeholder not in text, path


# -- for real: the Redis commands, the probes and two exporters ---------------------------------


def kubernetes_redis(tmp: Path, port: int) -> tuple[list[str], Callable[[str], list[str]]]:
    """(redis-server argv, probe argv for a password) of redis.yaml, as the kubelet runs them."""
    container = container_of(redis_deployment())
    server = redis_server_path()
    args = [PASSWORD if a == REDIS_ARG else a for a in container["args"][1:]]
    probe = container["readinessProbe"]["exec"]["command"]
    return [*local_redis_args(server, port, tmp), *args], lambda _password: probe


def compose_redis(tmp: Path, port: int) -> tuple[list[str], Callable[[str], list[str]]]:
    """(argv, probe) of the compose redis service: its shell command with compose's ``$$``
    unescaped, the secret at a temp path and redis-server told a local port."""
    service = compose()["services"]["redis"]
    server = redis_server_path()
    secret = tmp / "redis-password"

    def local(text: str) -> str:
        return text.replace("$$", "$").replace(f"{SECRETS_DIR}/redis-password", str(secret))

    sh, flag, script = service["command"]
    assert (sh, flag) == ("sh", "-c") and script.startswith("exec redis-server ")
    extra = shlex.join(local_redis_args(server, port, tmp))
    argv = [sh, flag, local(script).replace("exec redis-server", f"exec {extra}", 1)]
    kind, test = service["healthcheck"]["test"]
    assert kind == "CMD-SHELL"

    def probe(password: str) -> list[str]:
        secret.write_text(password + "\n")
        return ["sh", "-c", local(test)]

    secret.write_text(PASSWORD + "\n")
    return argv, probe


def probe_ok(argv: list[str], port: int, password: str) -> bool:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "REDISCLI_AUTH": password}
    command = [*argv[:-1], argv[-1].replace("redis-cli ", f"redis-cli -p {port} ", 1)]
    return run(command, env=env, timeout=15).returncode == 0


VARIANTS = {
    "kubernetes": (kubernetes_redis, HA_CONFIG),
    "compose": (compose_redis, COMPOSE_HA_CONFIG),
}


@pytest.fixture
def simulator_for() -> Iterator[Callable[[dict[str, Any]], Any]]:
    from exporter.simulator import Simulator

    sims: list[Any] = []

    def start(app: dict[str, Any]) -> Any:
        ids = [m if isinstance(m, str) else m["id"] for m in app["meetings"]]
        sim = Simulator(
            token=TOKEN, account_id=app["account_id"], app_id=app["app_id"], meetings=ids, seed=1
        )
        sim.start("127.0.0.1", 0)
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        sim.stop()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.process
def test_ha_redis_and_two_exporters_run(
    variant: str, tmp_path: Path, simulator_for: Callable[[dict[str, Any]], Any]
) -> None:
    """The deploy file's Redis command and probe, and two exporters with its config (only the
    addresses and the password file's path changed): one leads, the other stands by."""
    make_redis, config_path = VARIANTS[variant]
    port = free_port()
    argv, probe = make_redis(tmp_path, port)
    redis = RedisServer(argv, tmp_path, port)
    redis.start(timeout=15)
    exporters: list[ExporterProcess] = []
    try:
        assert probe_ok(probe(PASSWORD), port, PASSWORD), "the probe fails on a healthy Redis"
        assert not probe_ok(probe("wrong-" + PASSWORD), port, "wrong-" + PASSWORD), (
            "the probe passes with a wrong password"
        )
        probe(PASSWORD)  # the compose variant's secret file back to the right password
        local, _ = with_password_file(config_path, tmp_path)
        config = load_yaml(local)
        (app,) = config["apps"]
        sim = simulator_for(app)
        config["api"].update(base_url=sim.base_url, allow_insecure_http=True)
        config["coordination"]["redis_url"] = f"redis://127.0.0.1:{port}/0"
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            exporters.append(ExporterProcess(config, tmp_path / name))
        scrapes = wait_for(lambda: both_settled(exporters, len(app["meetings"])), timeout=30)
        leaders = [value(s, "realtimekit_exporter_leader") for s in scrapes]
        assert sorted(leaders) == [0.0, 1.0], leaders
        for exporter in exporters:
            assert PASSWORD not in exporter.log() and PASSWORD not in exporter.metrics_text()
    finally:
        for exporter in exporters:
            exporter.stop()
        redis.stop()
    assert PASSWORD not in redis.log.read_text(errors="replace")


def both_settled(exporters: list[ExporterProcess], meetings: int) -> list[Any] | None:
    """Both scrapes once both are ready, coordinated, one leads with every meeting's series
    and the other exports none."""
    if any(e.get("/-/ready").status_code != 200 for e in exporters):
        return None
    scrapes = [e.scrape() for e in exporters]
    if any(value(s, "realtimekit_coordination_up") != 1 for s in scrapes):
        return None
    ups = [sum(1 for (n, _) in s if n == "realtimekit_up") for s in scrapes]
    return scrapes if sorted(ups) == [0, meetings] else None
