"""The status page and /config say what is true (issue 22 item 6), against the real process."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.support.metrics import value
from tests.support.ports import free_port
from tests.support.process import wait_for

pytestmark = pytest.mark.process


def config_for(sim, **extra):
    return {
        "api": {"base_url": sim.base_url, "timeout_seconds": 2},
        "poll": {"interval_seconds": 1},
        "apps": [{"account_id": sim.account_id, "app_id": sim.app_id,
                  "meetings": list(sim.meeting_ids)}],
        **extra,
    }  # fmt: skip


def test_nothing_answered_yet_is_said_and_then_when(simulator, start_exporter):
    for meeting in simulator.meeting_ids:
        simulator.set_fault(meeting, "500")
    exporter = start_exporter(config_for(simulator))
    wait_for(
        lambda: value(exporter.scrape(), "realtimekit_up", meeting_id=simulator.meeting_ids[0]) == 0
    )
    page = exporter.get("/").text
    assert "last valid API answer none yet" in page
    assert "last success" not in page
    assert "off (listed meetings only)" in page  # discovery is off: said, not a blank cell
    assert "Off: no <code>webhooks.listen_address</code>" in page
    for meeting in simulator.meeting_ids:
        simulator.set_fault(meeting, None)
    exporter.wait_ready()

    def answered() -> str | None:
        page = exporter.get("/").text
        return None if "none yet" in page else page

    page = wait_for(answered, timeout=5)
    assert re.search(r"last valid API answer \d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d", page), page[:2000]


def test_config_page_shows_the_values_in_force(simulator, start_exporter):
    exporter = start_exporter(config_for(simulator))
    shown = yaml.safe_load(exporter.get("/config").text)
    assert shown["api"]["token_env"] == "CLOUDFLARE_API_TOKEN"
    assert shown["poll"]["stale_after_seconds"] == 3.0  # 3 x the interval, not null


def test_webhooks_section_names_the_receiver_and_each_apps_health(simulator, start_exporter):

    port = free_port()
    config = config_for(simulator, webhooks={"listen_address": f"127.0.0.1:{port}",
                                             "public_key_url": "http://127.0.0.1:1/key"})  # fmt: skip
    config["apps"][0]["webhooks"] = {"enabled": True}
    exporter = start_exporter(config)
    page = exporter.get("/").text
    assert f"Receiver on 127.0.0.1:{port}" in page
    assert simulator.app_id in page.split("<h2>Webhooks</h2>")[1]
    assert "not healthy" in page and "never" in page
