"""The fast renderer of the per-meeting families against prometheus_client's rendering of
``MeetingCollector.collect()``: same bytes in the text format, valid OpenMetrics, promtool clean,
and a cache that never serves a fragment of a state that changed or turned stale."""

from __future__ import annotations

import gzip
import math
import random
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import generate_latest as om_generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from exporter.app import metrics_response
from exporter.collector import MeetingCollector
from exporter.errors import ApiError
from exporter.exposition import PartsGzip
from exporter.exposition import go_float as _value
from exporter.families import FAMILIES, POLLED
from exporter.model import NO_ACTIVE_SESSION, MeetingKey, Session
from exporter.store import Store
from tests.support.clock import FakeTime
from tests.support.tools import require_binary

ACC, APP = "023e105f4ecef8ad9ca31a8372d0c353", "6f0a8a2c3b8e4f62a1d2c3b4e5f60718"
T0 = 1795849800.0
STALE_AFTER = 90.0
NASTY = 'Ünïcode "quoted" back\\slash\nnew line {braces} # not a comment, 日本語 – ✓'


def key(meeting: str, app: str = APP) -> MeetingKey:
    return MeetingKey(ACC, app, meeting)


def live(**kw: object) -> Session:
    base: dict[str, object] = {
        "id": "sess-1",
        "status": "LIVE",
        "live_participants": 3.0,
        "max_concurrent_participants": 5.0,
        "minutes_consumed": 12.5,
        "started_at": T0 - 600,
        "type": "meeting",
        "meeting_display_name": "Weekly sync",
    }
    return Session(**(base | kw))  # type: ignore[arg-type]


def varied_store(clock: FakeTime) -> Store:
    """Every kind of meeting state the collector distinguishes."""
    store = Store()
    labels = {
        "m-live": (("team", "sales"),),
        # Static labels sorting before, between and after the exporter's own.
        "m-nasty": (("aaa", "first"), ("floor", NASTY), ("zone", 'z"\\')),
        "m-stale": (("team", "eng"),),
    }
    names = [
        "m-live", "m-ended", "m-empty", "m-broken", "m-failing", "m-stale", "m-nasty",
        "m-bare", "m-never", "m-other-status", "m-big", "m-limited",
    ]  # fmt: skip
    store.set_targets({key(m): labels.get(m, ()) for m in names} | {key("m-x", "app2"): ()})
    t = T0 - 20

    def poll(meeting: str, outcome: object, duration: float = 0.125, at: float = t) -> None:
        store.record(key(meeting), outcome, duration, at)  # type: ignore[arg-type]

    poll("m-live", live())
    poll("m-ended", live(id="sess-e", status="ENDED", live_participants=0.0, type="livestream"))
    poll("m-empty", NO_ACTIVE_SESSION, 0.0123456789)
    poll("m-broken", ApiError("http_5xx", "boom"))
    poll("m-broken", ApiError("timeout", "slow"), 2.0)
    poll("m-broken", ApiError("http_5xx", "boom"))
    poll("m-failing", live(id="sess-f"))
    poll("m-failing", ApiError("invalid_response", "bad"))
    poll("m-stale", live(id="sess-s"), at=T0 - 200)  # older than STALE_AFTER
    poll("m-stale", ApiError("connect", "refused"))
    poll("m-nasty", live(id='s"\\\n1', type=NASTY, meeting_display_name=NASTY))
    poll(
        "m-bare",
        live(
            id="sess-b",
            max_concurrent_participants=None,
            minutes_consumed=None,
            started_at=None,
            type=None,
            meeting_display_name=None,
        ),
        1e-05,
    )
    # m-never: not polled yet
    poll("m-other-status", live(id="sess-o", status="WAITING"))
    poll(
        "m-big",
        live(id="sess-big", live_participants=1234567.0, minutes_consumed=1e15 / 60),
        at=T0 - 0.1234567,
    )
    poll("m-limited", NO_ACTIVE_SESSION)
    poll("m-limited", ApiError("rate_limited", "429"))
    store.record(key("m-x", "app2"), NO_ACTIVE_SESSION, 0.5, t)
    return store


def collector(store: Store, clock: FakeTime) -> MeetingCollector:
    return MeetingCollector(store, stale_after_seconds=lambda: STALE_AFTER, clock=clock)


def exposition(collectors: list[Any], accept: str | None) -> tuple[list[bytes], str] | None:
    """The body parts and content type /metrics serves for ``accept`` (no gzip, no filter)."""
    answer = metrics_response(
        collectors, PartsGzip(), accept=accept, accept_encoding=None, query=""
    )
    if answer is None:
        return None
    headers, parts = answer
    return parts, dict(headers)["Content-Type"]


def reference(mc: MeetingCollector, openmetrics: bool = False) -> bytes:
    """prometheus_client's own rendering of the plain collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(mc)
    if openmetrics:
        return om_generate_latest(registry)
    return generate_latest(registry)


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime(T0)


@pytest.fixture
def store(clock: FakeTime) -> Store:
    return varied_store(clock)


def test_text_output_equals_prometheus_client(store: Store, clock: FakeTime):
    mc = collector(store, clock)
    text = mc.render()
    assert text == reference(mc)
    # The varied store really is varied.
    decoded = text.decode()
    for needle in ("m-nasty", r"\"quoted\"", r"back\\slash\nnew", "日本語", 'reason="timeout"',
                   'status="LIVE"', "1.234567e+06", "1e-05"):  # fmt: skip
        assert needle in decoded, needle
    assert 'meeting_id="m-stale"' in decoded
    assert 'meeting_id="m-never"' not in decoded  # nothing known yet: no series at all
    assert 'realtimekit_session_active{account_id="023e105f4ecef8ad9ca31a8372d0c353",app_id="6f0a8a2c3b8e4f62a1d2c3b4e5f60718",meeting_id="m-stale"' not in decoded  # fmt: skip


def test_openmetrics_output_equals_prometheus_client_and_parses(store: Store, clock: FakeTime):
    mc = collector(store, clock)
    om = mc.render(openmetrics=True) + b"# EOF\n"
    assert om == reference(mc, openmetrics=True)
    families = {f.name: f for f in om_parse(om.decode())}
    assert families["realtimekit_poll_errors"].type == "counter"
    info = [
        s
        for s in families["realtimekit_session_info"].samples
        if s.labels["meeting_id"] == "m-nasty"
    ]
    assert info[0].labels["meeting_display_name"] == NASTY
    assert info[0].labels["floor"] == NASTY


def test_text_output_parses_back_to_the_same_values(store: Store, clock: FakeTime):
    mc = collector(store, clock)
    parsed = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(mc.render().decode())
        for s in f.samples
    }
    nasty = dict((("account_id", ACC), ("app_id", APP), ("meeting_id", "m-nasty"), ("aaa", "first"), ("floor", NASTY), ("zone", 'z"\\')))  # fmt: skip
    info = tuple(sorted((nasty | {"session_id": 's"\\\n1', "type": NASTY, "meeting_display_name": NASTY}).items()))  # fmt: skip
    assert parsed[("realtimekit_session_info", info)] == 1.0


@pytest.mark.process
def test_promtool_is_clean_on_the_text_format(store: Store, clock: FakeTime):
    promtool = require_binary("promtool")
    mc = collector(store, clock)
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=mc.render(), capture_output=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == b"" and proc.stderr.strip() == b""


@pytest.mark.process
def test_promtool_finds_nothing_new_in_openmetrics(store: Store, clock: FakeTime):
    """promtool (2.42) lints with the text-format parser, so an OpenMetrics counter's HELP
    (named without ``_total``) reads as missing; prometheus_client's own OpenMetrics output
    has the same finding. Ours must have no other."""
    promtool = require_binary("promtool")
    mc = collector(store, clock)

    def findings(body: bytes) -> bytes:
        proc = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
        )
        return proc.stdout + proc.stderr

    def without_gauge_histogram(body: bytes) -> bytes:
        """promtool's text parser knows no ``gaugehistogram`` (prometheus_client's OpenMetrics
        parser reads it: test_openmetrics_output_equals_prometheus_client_and_parses)."""
        return b"".join(
            x for x in body.splitlines(keepends=True) if b"app_session_participants" not in x
        )

    ours = findings(without_gauge_histogram(mc.render(openmetrics=True) + b"# EOF\n"))
    assert ours == findings(without_gauge_histogram(reference(mc, openmetrics=True)))
    counters = ("realtimekit_poll_errors", "realtimekit_exporter_render_errors")
    assert set(ours.decode().splitlines()) <= {f"{c}_total no help text" for c in counters}


def test_stale_answers_are_not_served_from_the_cache(store: Store, clock: FakeTime):
    mc = collector(store, clock)
    first = mc.render()
    assert 'meeting_id="m-live",team="sales"} 3.0' in first.decode()
    # Nothing is polled, but time passes: every answer turns stale (the last at T0 - 0.12).
    clock.now = T0 + STALE_AFTER + 1
    assert mc.render() == reference(mc) != first
    assert "realtimekit_session_live_participants{" not in mc.render().decode()
    # And back (a clock going backwards must not serve the stale fragments either).
    clock.now = T0
    assert mc.render() == reference(mc) == first


def test_changed_states_are_rendered_again(store: Store, clock: FakeTime):
    mc = collector(store, clock)
    before = mc.render()
    store.record(key("m-live"), live(live_participants=7.0), 0.25, T0 - 1)
    store.record(key("m-empty"), ApiError("auth", "401"), 0.1, T0 - 1)
    store.set_targets(
        {k: (("team", "ops"),) if k.meeting_id == "m-ended" else v for k, v in _targets(store)}
        | {key("m-new"): ()}
    )
    store.record(key("m-new"), NO_ACTIVE_SESSION, 0.1, T0 - 1)
    store.merge(remove=[key("m-bare")])
    after = mc.render()
    assert after == reference(mc) != before
    text = after.decode()
    assert 'meeting_id="m-live",team="sales"} 7.0' in text
    assert 'meeting_id="m-empty",reason="auth"} 1.0' in text
    assert 'meeting_id="m-ended",team="ops"' in text
    assert 'meeting_id="m-new"' in text and 'meeting_id="m-bare"' not in text


def test_a_change_in_one_family_only(store: Store, clock: FakeTime):
    """Same poll time and duration, new participant count: one family's body changes."""
    mc = collector(store, clock)
    before = mc.render()
    store.record(key("m-live"), live(live_participants=4.0), 0.125, T0 - 20)
    after = mc.render()
    assert after == reference(mc)
    changed = [a for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert len(changed) == 2 and changed[0].startswith(b"realtimekit_session_live_participants{")
    assert changed[1].startswith(b"realtimekit_app_session_participants_gsum{")  # 3 -> 4: +1


def test_meetings_that_move_or_are_replaced(store: Store, clock: FakeTime):
    mc = collector(store, clock)
    mc.render()
    store.set_targets(dict(reversed(list(_targets(store)))))
    assert mc.render() == reference(mc)
    targets = dict(_targets(store))
    del targets[key("m-live")]
    targets[key("m-newcomer")] = ()
    store.set_targets(targets)  # same number of meetings, one other
    store.record(key("m-newcomer"), NO_ACTIVE_SESSION, 0.1, T0 - 1)
    assert mc.render() == reference(mc)
    # Without set_targets the others keep their state objects, and shift by one place.
    store.merge(remove=[key("m-ended")])
    store.merge(add={key("m-late"): ()})
    store.record(key("m-late"), NO_ACTIVE_SESSION, 0.1, T0 - 1)
    assert mc.render() == reference(mc)
    last = list(_targets(store))[-1][0]
    store.merge(remove=[last])  # nothing else moves
    assert mc.render() == reference(mc)
    assert f'meeting_id="{last.meeting_id}"'.encode() not in mc.render()


def _targets(store: Store) -> Iterator[tuple[MeetingKey, tuple[tuple[str, str], ...]]]:
    _, states = store.snapshot()
    return ((k, s.labels) for k, s in states.items())


def test_unchanged_meetings_reuse_their_cached_lines(store: Store, clock: FakeTime):
    mc = collector(store, clock)
    first = mc.render_parts()
    second = mc.render_parts()
    reused = [a for a, b in zip(first, second, strict=True) if a is b and b"m-live" in a]
    assert reused, "fragments of unchanged meetings should be the same objects"


def test_help_is_static(store: Store, clock: FakeTime):
    """HELP never follows the interval (it changes with the budget, webhook health and reloads;
    it is realtimekit_poll_effective_interval_seconds)."""
    mc = collector(store, clock)
    helps = [x for x in mc.render().splitlines() if x.startswith(b"# HELP realtimekit_")]
    assert len(helps) > 10 and not any(re.search(rb"every|\d seconds", h) for h in helps)
    polled = [h for h in helps if h.endswith(POLLED.encode())]
    assert len(polled) == len(FAMILIES) + 4  # and the aggregates (with _gcount, _gsum)
    assert mc.render() == reference(mc)


def test_empty_store_renders_headers_only(clock: FakeTime):
    mc = collector(Store(), clock)
    assert mc.render() == reference(mc)
    assert mc.render(openmetrics=True) + b"# EOF\n" == reference(mc, openmetrics=True)


def test_concurrent_renders_while_polls_land(store: Store, clock: FakeTime):
    mc = collector(store, clock)
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            store.record(key("m-live"), live(live_participants=float(n % 13)), 0.01, T0 - 1)

    def reader() -> None:
        try:
            for _ in range(20):
                list(text_string_to_metric_families(mc.render().decode()))
        except BaseException as err:  # reported below
            failures.append(err)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join(60)
    stop.set()
    threads[0].join(10)
    assert not failures
    assert mc.render() == reference(mc)


class Other:
    """A deterministic stand-in for the registry's other collectors."""

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("other_gauge", 'Help with "quotes" and \\ backslash.', labels=["x"])
        g.add_metric(['va"l'], 1.5)
        yield g
        c = CounterMetricFamily("other_events", "Events.", labels=["kind"])
        c.add_metric(["a"], 3)
        yield c


ACCEPTS = [
    None,
    "",
    "text/plain",
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text",
    "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=0.0.1",
    # Prometheus 3's default
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
]


@pytest.mark.parametrize("accept", ACCEPTS)
def test_exposition_matches_prometheus_client_for_every_accept_header(
    store: Store, clock: FakeTime, accept: str | None
):
    collectors = [Other(), collector(store, clock), Other2()]
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    encoder, content_type = choose_encoder(accept or "")
    rendered = exposition(collectors, accept)
    assert rendered is not None
    parts, rendered_type = rendered
    assert (b"".join(parts), rendered_type) == (encoder(registry), content_type)


class Other2(Other):
    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("other_last", "Last.")
        g.add_metric([], 2)
        yield g


def test_exposition_declines_what_only_prometheus_client_does(store: Store, clock: FakeTime):
    collectors = [collector(store, clock)]
    assert exposition(collectors, "text/plain;version=1.0.0;escaping=dots") is None
    assert (
        exposition(collectors, "application/openmetrics-text;version=1.0.0;escaping=values") is None
    )


def family_names(body: bytes) -> list[str]:
    return [line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE")]


@pytest.mark.parametrize(
    ("query", "families"),
    [
        ("name[]=realtimekit_up", ["realtimekit_up"]),
        ("name[]=realtimekit_poll_errors_total", ["realtimekit_poll_errors_total"]),
        ("name[]=realtimekit_poll_errors", ["realtimekit_poll_errors_total"]),
        (
            "name[]=other_last&name[]=realtimekit_session_info",
            ["realtimekit_session_info", "other_last"],
        ),
        ("name[]=nothing_like_it", []),
    ],
)
def test_name_filters_select_families(
    store: Store, clock: FakeTime, query: str, families: list[str]
):
    mc = collector(store, clock)
    answer = metrics_response(
        [Other(), mc, Other2()], PartsGzip(), accept=None, accept_encoding=None, query=query
    )
    assert answer is not None
    body = b"".join(answer[1])
    assert family_names(body) == families
    full = reference(mc).decode().splitlines()
    for line in body.decode().splitlines():  # the lines themselves are the unfiltered ones
        if line.startswith("realtimekit_"):
            assert line in full


@pytest.mark.parametrize(
    ("accept_encoding", "zipped"),
    [
        (None, False),
        ("br, gzip;q=0.9", True),
        ("gzip", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0, br", False),
        ("*", True),
        ("*;q=0", False),
        ("identity", False),
    ],
)
def test_metrics_response_gzips_when_asked(
    store: Store, clock: FakeTime, accept_encoding: str | None, zipped: bool
):
    mc = collector(store, clock)
    answer = metrics_response(
        [mc], PartsGzip(), accept=None, accept_encoding=accept_encoding, query=""
    )
    assert answer is not None
    headers, parts = answer
    assert (("Content-Encoding", "gzip") in headers) is zipped
    assert ("Content-Length", str(sum(map(len, parts)))) in headers
    body = b"".join(parts)
    assert (gzip.decompress(body) if zipped else body) == reference(mc)


@pytest.mark.process
def test_gzip_parts_stay_right_while_the_store_changes(store: Store, clock: FakeTime):
    mc = collector(store, clock)
    parts_gzip = PartsGzip()
    parts_gzip.MIN_CACHED = 1  # cache every part, even the small ones of this store

    def scrape() -> bytes:
        answer = metrics_response([mc], parts_gzip, accept=None, accept_encoding="gzip", query="")
        assert answer is not None
        (body,) = answer[1]
        if shutil.which("gzip"):  # the stream itself (CRC, length, blocks) as gzip sees it
            check = subprocess.run(["gzip", "-t"], input=body, capture_output=True, timeout=30)
            assert check.returncode == 0, check.stderr
        return gzip.decompress(body)

    assert scrape() == reference(mc)
    assert scrape() == reference(mc)  # from cached parts
    store.record(key("m-live"), live(live_participants=9.0), 0.3, T0 - 2)
    clock.now = T0 + STALE_AFTER - 3  # and some answers turned stale
    assert scrape() == reference(mc)


def test_value_formatting_matches_prometheus_client():
    rng = random.Random(7)
    values = [0.0, -0.0, 1.0, 1e6, 999999.9999, 1e16, 9999999999999998.0, 1e15 + 0.5,
              123456789.0, T0, T0 + 0.1234567, math.inf, -math.inf, math.nan, 5e-324, 1e-5,
              1e300, 750.0, 0.1 + 0.2, 1000.0, 1001.0]  # fmt: skip
    values += [rng.uniform(0, 2e9) for _ in range(20000)]
    values += [10 ** rng.uniform(-10, 20) for _ in range(20000)]
    values += [float(rng.randint(0, 10**17)) for _ in range(2000)]
    assert [v for v in values if _value(v) != floatToGoString(v)] == []


def test_random_changes_keep_the_cached_bodies_exact(clock: FakeTime):
    """Polls, stale answers, labels, meetings coming, going and moving, options flipping, in a
    random order: after every step the cached bodies are what prometheus_client writes."""
    from exporter.config import MetricsOptions

    rng = random.Random(26)
    store = varied_store(clock)
    options: dict[tuple[str, str], MetricsOptions] = {}
    mc = MeetingCollector(
        store, stale_after_seconds=lambda: STALE_AFTER, options=lambda: options, clock=clock
    )
    outcomes = [
        lambda: live(live_participants=float(rng.randint(0, 1500)), minutes_consumed=rng.random()),
        lambda: live(id=f"s{rng.randint(0, 3)}", status=rng.choice(["LIVE", "ENDED"])),
        lambda: live(meeting_display_name=rng.choice([NASTY, "x", None])),
        lambda: NO_ACTIVE_SESSION,
        lambda: ApiError(rng.choice(["timeout", "http_5xx", "auth"]), "x"),
    ]
    for step in range(300):
        keys = [k for k, _ in _targets(store)]
        action = rng.random()
        if action < 0.55 and keys:
            for k in rng.sample(keys, rng.randint(1, min(4, len(keys)))):
                when = clock.now - rng.uniform(0, 2 * STALE_AFTER)
                store.record(k, rng.choice(outcomes)(), rng.uniform(0, 1), when)  # type: ignore[arg-type]
        elif action < 0.65:
            clock.now += rng.choice([-30.0, 1.0, 45.0])
        elif action < 0.75:
            targets = dict(_targets(store))
            if rng.random() < 0.5:
                targets = dict(rng.sample(list(targets.items()), len(targets)))
            for k in rng.sample(list(targets), min(2, len(targets))):
                targets[k] = rng.choice([(), (("team", "a"),), (("floor", NASTY),)])
            store.set_targets(targets)
        elif action < 0.85:
            if keys and rng.random() < 0.5:
                store.merge(remove=[rng.choice(keys)])
            else:
                store.merge(add={key(f"m-new{step}", rng.choice([APP, "app2"])): ()})
        else:
            app = rng.choice([(ACC, APP), (ACC, "app2")])
            options[app] = MetricsOptions(
                per_meeting=rng.random() < 0.7, display_name=rng.random() < 0.5
            )
        assert mc.render() == reference(mc), f"step {step}"
        if step % 25 == 0:
            assert mc.render(openmetrics=True) + b"# EOF\n" == reference(mc, openmetrics=True)
