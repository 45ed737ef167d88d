"""The example Alertmanager config (deploy/alertmanager/alertmanager.yml) against a real
Alertmanager (Debian's ``prometheus-alertmanager``) on 127.0.0.1: ``amtool check-config`` passes,
and alerts posted to it are inhibited exactly as the file's comments say (one ``not_found``
meeting pages once, not also as stale). A missing binary skips, or fails with
``RTK_REQUIRE_PROMETHEUS=1`` (.ci/run installs it).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.ports import free_port
from tests.support.process import NO_PROXY, running, wait_ok
from tests.support.tools import require_tool

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


def require(*names: str) -> str:
    return require_tool(
        *names, hint="apt-get install prometheus-alertmanager", env="RTK_REQUIRE_PROMETHEUS"
    )


def test_amtool_check_config() -> None:
    amtool = require("amtool")
    result = subprocess.run(
        [amtool, "check-config", str(CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_inhibitions_name_shipped_alerts() -> None:
    shipped = {
        rule["alert"]
        for group in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            match = re.fullmatch(r'alertname(=|!=|=~)"(.+)"', matcher)
            if match is None:
                continue
            op, value = match.groups()
            names = value.split("|") if op == "=~" and ".+" not in value else [value]
            for name in names if op != "=~" or ".+" not in value else []:
                assert name in shipped, f"{matcher}: no alert {name} in alerts.yml"


def _request(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with NO_PROXY.open(req, timeout=5) as response:
        text = response.read().decode()
    return json.loads(text) if text.strip() else None


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    binary = require("prometheus-alertmanager", "alertmanager")
    port = free_port()
    cmd = [
        binary,
        f"--config.file={CONFIG}",
        f"--storage.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: a single instance
    ]
    url = f"http://127.0.0.1:{port}"

    with running(cmd, tmp_path / "alertmanager.log") as process:
        wait_ok(url + "/-/ready", process, 30)
        yield url


def _alert(name: str, **labels: str) -> dict[str, Any]:
    base = {"job": "realtimekit", "instance": "exporter:9877", "severity": "warning"}
    return {"labels": {"alertname": name, **base, **labels}, "annotations": {"summary": name}}


def test_one_cause_pages_once(alertmanager: str) -> None:
    m1 = {"account_id": "acc", "app_id": "app", "meeting_id": "m1"}
    m2 = {"account_id": "acc", "app_id": "app", "meeting_id": "m2"}
    other_app = {"account_id": "acc", "app_id": "other", "meeting_id": "m3"}
    posted = [
        _alert("RealtimeKitMeetingNotFound", **m1),
        _alert("RealtimeKitMeetingDataStale", **m1),  # inhibited: its meeting is not found
        _alert("RealtimeKitMeetingDataStale", **m2),  # another meeting: pages
        _alert("RealtimeKitAuthFailing", account_id="acc", app_id="other", severity="critical"),
        _alert("RealtimeKitMeetingDataStale", **other_app),  # inhibited: the app's token fails
    ]
    _request(alertmanager + "/api/v2/alerts", posted)

    def state() -> dict[tuple[str, str], bool]:
        alerts = _request(alertmanager + "/api/v2/alerts")
        return {
            (a["labels"]["alertname"], a["labels"].get("meeting_id", "")): bool(
                a["status"]["inhibitedBy"]
            )
            for a in alerts
        }

    deadline = time.monotonic() + 20
    while len(seen := state()) < len(posted):
        assert time.monotonic() < deadline, f"Alertmanager shows {seen}"
        time.sleep(0.2)
    assert seen == {
        ("RealtimeKitMeetingNotFound", "m1"): False,
        ("RealtimeKitMeetingDataStale", "m1"): True,
        ("RealtimeKitMeetingDataStale", "m2"): False,
        ("RealtimeKitAuthFailing", ""): False,
        ("RealtimeKitMeetingDataStale", "m3"): True,
    }
