"""Per-app aggregates and the cardinality switches (issue 26): the participants gauge histogram
and the failing meetings of every app, ``metrics.per_meeting: false`` (only aggregates, polling
goes on) and ``metrics.display_name: false`` (no title label); the cached renderer equals
prometheus_client's rendering in every mode, promtool is clean in every mode, and the real
process serves them."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from exporter.collector import MeetingCollector
from exporter.config import MetricsOptions
from exporter.errors import ApiError
from exporter.model import NO_ACTIVE_SESSION, MeetingKey, Session
from exporter.store import Store
from tests.support.api import sim_config
from tests.support.clock import FakeTime
from tests.support.metrics import parse_metrics, value
from tests.support.process import wait_for
from tests.support.tools import require_binary

ACC = "023e105f4ecef8ad9ca31a8372d0c353"
APP, QUIET, NAMELESS, EMPTY = "app-main", "app-quiet", "app-nameless", "app-empty"
NOW = 1_800_000_000.0
HIST = "realtimekit_app_session_participants"


def live(n: float, status: str = "LIVE", name: str = "Board meeting") -> Session:
    return Session(
        id=f"s-{n}", status=status, live_participants=float(n), meeting_display_name=name
    )


def fleet() -> Store:
    """Meetings of three apps: sizes on and around every bucket bound, an ENDED session, no
    session, a failing meeting (with and without a fresh answer), a stale one, one not polled."""
    store = Store()
    sizes = {"m0": 0, "m1": 1, "m2": 2, "m3": 3, "m1000": 1000, "m1001": 1001, "m250": 250.5}
    outcomes: dict[MeetingKey, list[Any]] = {
        MeetingKey(ACC, APP, m): [live(n)] for m, n in sizes.items()
    }
    outcomes[MeetingKey(ACC, APP, "ended")] = [live(0, "ENDED")]
    outcomes[MeetingKey(ACC, APP, "idle")] = [NO_ACTIVE_SESSION]
    outcomes[MeetingKey(ACC, APP, "fail-fresh")] = [live(7), ApiError("timeout", "slow")]
    outcomes[MeetingKey(ACC, APP, "fail-never")] = [ApiError("auth", "401")]
    outcomes[MeetingKey(ACC, APP, "new")] = []
    for app in (QUIET, NAMELESS):
        outcomes[MeetingKey(ACC, app, "a")] = [live(4, name="Secret title")]
        outcomes[MeetingKey(ACC, app, "b")] = [live(30), ApiError("http_5xx", "boom")]
    store.set_targets({key: (("team", "x"),) for key in outcomes})
    for key, results in outcomes.items():
        for result in results:
            store.record(key, result, 0.1, NOW - 10)
    stale = MeetingKey(ACC, APP, "stale")
    store.merge(add={stale: ()}, record=[(stale, live(5), 0.1, NOW - 500)])
    return store


OPTIONS = {
    (ACC, APP): MetricsOptions(),
    (ACC, QUIET): MetricsOptions(per_meeting=False),
    (ACC, NAMELESS): MetricsOptions(display_name=False),
    (ACC, EMPTY): MetricsOptions(),
}


def collector(
    store: Store, options: dict[Any, MetricsOptions], clock: FakeTime
) -> MeetingCollector:
    return MeetingCollector(
        store, stale_after_seconds=lambda: 90, options=lambda: options, clock=clock
    )


def reference(mc: MeetingCollector, openmetrics: bool = False) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(mc)
    return om_generate_latest(registry) if openmetrics else generate_latest(registry)


def test_histogram_buckets_count_and_sum() -> None:
    mc = collector(fleet(), OPTIONS, FakeTime(NOW))
    samples = parse_metrics(mc.render().decode())

    def bucket(le: str, app: str = APP) -> float | None:
        return value(samples, HIST + "_bucket", app_id=app, le=le)

    # LIVE and fresh: 0, 1, 2, 3, 250.5, 1000, 1001 (fail-fresh's last answer is LIVE with 7).
    assert [bucket(le) for le in ("1.0", "2.0", "5.0", "10.0", "25.0", "50.0", "100.0")] == [
        2, 3, 4, 5, 5, 5, 5,
    ]  # fmt: skip
    assert [bucket(le) for le in ("250.0", "500.0", "1000.0", "+Inf")] == [5, 6, 7, 8]
    assert value(samples, HIST + "_gcount", app_id=APP) == 8
    assert value(samples, HIST + "_gsum", app_id=APP) == 0 + 1 + 2 + 3 + 1000 + 1001 + 250.5 + 7
    assert value(samples, "realtimekit_app_meetings_failing", app_id=APP) == 2
    # per_meeting: false keeps its aggregates; an app without meetings has zeros.
    assert value(samples, HIST + "_bucket", app_id=QUIET, le="+Inf") == 2
    assert value(samples, "realtimekit_app_meetings_failing", app_id=QUIET) == 1
    assert value(samples, HIST + "_bucket", app_id=EMPTY, le="+Inf") == 0
    assert value(samples, "realtimekit_app_meetings_failing", app_id=EMPTY) == 0


def test_per_meeting_false_and_display_name_false() -> None:
    text = collector(fleet(), OPTIONS, FakeTime(NOW)).render().decode()
    series = [x for x in text.splitlines() if x and not x.startswith("#")]
    quiet = [x for x in series if f'app_id="{QUIET}"' in x]
    assert quiet and all(x.startswith(("realtimekit_app_",)) for x in quiet)
    nameless = [x for x in series if f'app_id="{NAMELESS}"' in x]
    assert any(x.startswith("realtimekit_session_info{") for x in nameless)
    assert not any("meeting_display_name" in x for x in nameless)
    assert 'meeting_display_name="Board meeting"' in text  # the other app keeps it


@pytest.mark.parametrize(
    "options",
    [
        OPTIONS,
        {},  # no options: every app of the store, defaults
        {k: MetricsOptions(per_meeting=False) for k in OPTIONS},
        {k: MetricsOptions(display_name=False) for k in OPTIONS},
    ],
)
def test_cached_renderer_equals_prometheus_client_in_every_mode(options: Any) -> None:
    clock = FakeTime(NOW)
    mc = collector(fleet(), options, clock)
    assert mc.render() == reference(mc)
    assert mc.render(openmetrics=True) + b"# EOF\n" == reference(mc, openmetrics=True)
    families = {f.name: f for f in om_parse(reference(mc, openmetrics=True).decode())}
    assert families[HIST].type == "gaugehistogram"
    clock.now = NOW + 85  # m-stale's neighbours turn stale: the cached render is not served
    assert mc.render() == reference(mc)


def test_options_changed_by_a_reload_apply_at_once() -> None:
    options = dict(OPTIONS)
    clock = FakeTime(NOW)
    store = fleet()
    mc = collector(store, options, clock)
    assert b"Secret title" not in mc.render()
    options[(ACC, NAMELESS)] = MetricsOptions()
    options[(ACC, APP)] = MetricsOptions(per_meeting=False)
    text = mc.render()
    assert text == reference(mc) and b"Secret title" in text
    assert f'realtimekit_up{{account_id="{ACC}",app_id="{APP}"'.encode() not in text


def test_nothing_changed_serves_the_last_render_and_changes_are_seen() -> None:
    clock = FakeTime(NOW)
    store = fleet()
    mc = collector(store, OPTIONS, clock)
    first = mc.render_parts()
    again = mc.render_parts()
    blocks = slice(1, 22, 2)  # the body of each per-meeting family, after its header
    assert all(a is b for a, b in zip(first[blocks], again[blocks], strict=True))
    store.record(MeetingKey(ACC, QUIET, "a"), live(60), 0.1, NOW - 1)
    samples = parse_metrics(mc.render().decode())
    assert value(samples, HIST + "_bucket", app_id=QUIET, le="50.0") == 1  # 30 and 60 now
    assert value(samples, HIST + "_bucket", app_id=QUIET, le="100.0") == 2


def test_name_filter_selects_the_aggregates() -> None:
    mc = collector(fleet(), OPTIONS, FakeTime(NOW))
    body = b"".join(mc.render_parts(names=frozenset({HIST + "_bucket"}))).decode()
    assert f"# TYPE {HIST} histogram" in body and "realtimekit_up" not in body
    assert "realtimekit_app_meetings_failing" not in body
    body = b"".join(mc.render_parts(names=frozenset({"realtimekit_app_meetings_failing"})))
    assert body.decode().count("# TYPE") == 1


@pytest.mark.parametrize("per_meeting", [True, False])
@pytest.mark.parametrize("display_name", [True, False])
@pytest.mark.process
def test_promtool_is_clean_in_every_mode(per_meeting: bool, display_name: bool) -> None:
    promtool = require_binary("promtool")
    options = {
        k: MetricsOptions(per_meeting=per_meeting, display_name=display_name) for k in OPTIONS
    }
    body = collector(fleet(), options, FakeTime(NOW)).render()
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert proc.returncode == 0 and not proc.stdout and not proc.stderr, proc.stdout + proc.stderr


# -- the real process -----------------------------------------------------------------------------


def test_per_meeting_false_in_the_real_process(simulator, start_exporter) -> None:
    sim = simulator
    sizes = dict(zip(sim.meeting_ids, (1, 3, 12), strict=False))  # the fourth stays idle
    for meeting, n in sizes.items():
        sim.set_participants(meeting, n)
    config = sim_config(sim)
    config["apps"][0]["metrics"] = {"per_meeting": False}
    exporter = start_exporter(config)
    exporter.wait_ready()

    def aggregated() -> dict[Any, float]:
        samples = exporter.scrape()
        assert value(samples, HIST + "_bucket", le="+Inf") == 3
        return samples

    samples = wait_for(aggregated)
    assert value(samples, HIST + "_bucket", le="1.0") == 1
    assert value(samples, HIST + "_bucket", le="5.0") == 2
    assert value(samples, HIST + "_gsum") == 16
    assert value(samples, "realtimekit_app_meetings_failing") == 0
    assert not [name for name, labels in samples if ("meeting_id", sim.meeting_ids[0]) in labels]
    assert "config warning" not in exporter.log() and "not implemented" not in exporter.log()
    page = exporter.get("/")
    assert page.status_code == 200
    assert all(meeting in page.text for meeting in sim.meeting_ids)  # still listed there
    sim.set_fault(sim.meeting_ids[3], "500")  # polling goes on: a failure is counted
    wait_for(lambda: value(exporter.scrape(), "realtimekit_app_meetings_failing") == 1)


def test_display_name_false_in_the_real_process(simulator, start_exporter) -> None:
    sim = simulator
    for meeting in sim.meeting_ids:
        sim.set_participants(meeting, 2)
    config = sim_config(sim)
    config["apps"][0]["metrics"] = {"display_name": False}
    exporter = start_exporter(config)
    exporter.wait_ready()
    text = wait_for(
        lambda: (t := exporter.metrics_text()).count("realtimekit_session_info{") == 4 and t
    )
    assert "meeting_display_name" not in text
    om = exporter.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.status_code == 200 and "meeting_display_name" not in om.text
    assert value(parse_metrics(text), HIST + "_gcount") == 4
