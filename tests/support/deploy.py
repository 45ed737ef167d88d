"""The deployment files (``deploy/``) as the deploy, HA and shard tests read them."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.process import ROOT
from tests.support.tools import require_module

DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "docker-compose.yml"
CONFIG_PATH_IN_IMAGE = "/etc/realtimekit-exporter/config.yaml"
DEFAULT_PORT = 9877
#: Prometheus Operator kinds, which kubernetes-validate has no schema for.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def run(cmd: list[str], *, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def compose_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Bind mounts of a service: container path -> host path (named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def validate_k8s(docs: list[dict[str, Any]], where: str) -> None:
    kv = require_module("kubernetes_validate", "pip install kubernetes-validate")
    version = kv.latest_version()
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1", f"{where}: {doc['kind']}"
            assert doc["metadata"]["name"] and doc["spec"], f"{where}: {doc['kind']}"
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as err:
            raise AssertionError(
                f"{where}: {doc['kind']} {doc['metadata']['name']}: {err}"
            ) from None


def parse_exporter_args(args: list[str]) -> Any:
    """The exporter's parsed command line; an unknown flag fails the test."""
    from exporter.cli import build_parser

    try:
        return build_parser().parse_args(args)
    except SystemExit as exc:  # argparse's way of saying "unknown flag"
        raise AssertionError(f"realtimekit-exporter rejects {args}") from exc
