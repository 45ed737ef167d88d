"""The webhook receiver: real RSA signatures, the WSGI app in-process and over a real socket."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from exporter.errors import ConfigError
from exporter.files import parse_public_key
from exporter.simulator.delivery import sign, well_known_body
from exporter.webhooks import (
    MAX_UNKNOWN_APP_LABELS,
    Deduper,
    Event,
    KeySource,
    MalformedEvent,
    WebhookHealth,
    WebhookReceiver,
    WebhookStats,
    parse_event,
    parse_well_known,
    verify,
)
from tests.support.api import TOKEN
from tests.support.clock import FakeTime
from tests.support.metrics import max_in_window, parse_metrics, value
from tests.support.ports import free_port
from tests.support.process import wait_for

APP = ("acc1", "app1")
PATH = "/webhooks/acc1/app1"


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def payload(event: str = "meeting.started", **extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "event": event,
        "meeting": {
            "id": "m-1",
            "sessionId": "s-1",
            "title": "Standup",
            "roomName": "room",
            "status": "LIVE",
            "createdAt": "2025-01-01T09:59:00.000Z",
            "startedAt": "2025-01-01T10:00:00.000Z",
            "organizedBy": {"id": "o1", "name": "Org"},
        },
        **extra,
    }
    return json.dumps(doc).encode()


# --- keys and signatures -------------------------------------------------------------------


def test_real_signature_verifies_and_tampering_does_not(
    private_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    body = payload()
    sig = sign(private_key, body)
    key = private_key.public_key()
    assert verify(key, body, sig)
    assert not verify(key, body + b" ", sig)  # one extra byte
    assert not verify(key, body.replace(b"m-1", b"m-2"), sig)
    assert not verify(other_key.public_key(), body, sig)
    assert not verify(key, body, sign(other_key, body))


@pytest.mark.parametrize("bad", ["", "!!!not base64!!!", "AAAA", "x" * 5000, "QUJD\n==="])
def test_malformed_signature_is_false_not_an_error(
    private_key: rsa.RSAPrivateKey, bad: str
) -> None:
    assert verify(private_key.public_key(), b"{}", bad) is False


def test_well_known_round_trip(private_key: rsa.RSAPrivateKey) -> None:
    body = well_known_body(private_key.public_key())
    assert json.loads(body)["success"] is True
    key = parse_well_known(body)
    assert key.public_numbers() == private_key.public_key().public_numbers()


def test_load_public_key_from_pem(private_key: rsa.RSAPrivateKey) -> None:
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert parse_public_key(pem).public_numbers() == private_key.public_key().public_numbers()


def test_bad_keys_are_config_errors_naming_the_source() -> None:
    with pytest.raises(ConfigError, match=r"^webhooks.public_key_file: not a PEM public key"):
        parse_public_key(
            b"-----BEGIN PUBLIC KEY-----\ngarbage\n", source="webhooks.public_key_file"
        )
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="RSA expected"):
        parse_public_key(ec_pem)
    with pytest.raises(ConfigError, match=r"webhooks.json: not valid JSON"):
        parse_well_known(b"<html>")
    with pytest.raises(ConfigError, match=r"field data.publicKey is missing"):
        parse_well_known(b'{"success": true, "data": {}}')


class Fetcher:
    """A well-known endpoint that serves whichever key it is told to, and counts the calls."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.calls = 0

    async def __call__(self) -> bytes:
        self.calls += 1
        return self.body


def test_key_source_refetches_at_most_once_per_ten_minutes(
    private_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    t = FakeTime()
    fetch = Fetcher(well_known_body(private_key.public_key()))
    keys = KeySource(fetch=fetch, clock=t)
    asyncio.run(keys.refresh())
    assert fetch.calls == 1 and keys.verify(b"x", sign(private_key, b"x"))
    assert not keys.claim_refetch()  # start-up fetch counts as an attempt
    fetch.body = well_known_body(other_key.public_key())  # the key rotates
    t.now += 599
    assert not keys.claim_refetch()
    t.now += 1
    assert keys.claim_refetch()
    assert not keys.claim_refetch()
    assert asyncio.run(keys.refetch()) is True
    assert fetch.calls == 2 and keys.verify(b"x", sign(other_key, b"x"))
    t.now += 600
    assert keys.claim_refetch()
    assert asyncio.run(keys.refetch()) is False  # same key again


def test_key_source_keeps_old_key_on_bad_refetch(private_key: rsa.RSAPrivateKey) -> None:
    keys = KeySource(private_key.public_key(), fetch=Fetcher(b"not json"), clock=FakeTime())
    assert keys.claim_refetch()
    assert asyncio.run(keys.refetch()) is False
    assert keys.verify(b"x", sign(private_key, b"x"))


def test_key_source_without_fetch_never_refetches(private_key: rsa.RSAPrivateKey) -> None:
    keys = KeySource(private_key.public_key())
    assert not keys.claim_refetch()
    assert not KeySource().verify(b"x", sign(private_key, b"x"))  # no key: nothing verifies


# --- events --------------------------------------------------------------------------------


def test_parse_meeting_ended() -> None:
    body = json.dumps(
        {
            "event": "meeting.ended",
            "reason": "ALL_PARTICIPANTS_LEFT",
            "meeting": {
                "id": "m1",
                "sessionId": "s1",
                "status": "LIVE",  # may still say LIVE: the event name counts
                "startedAt": "2025-01-01T09:00:00Z",
                "endedAt": "2025-01-01T10:00:00Z",
            },
        }
    ).encode()
    assert parse_event(body) == Event(
        name="meeting.ended",
        meeting_id="m1",
        session_id="s1",
        status="LIVE",
        started_at=1735722000.0,
        ended_at=1735725600.0,
        reason="ALL_PARTICIPANTS_LEFT",
    )


def test_parse_participant_and_non_meeting_events() -> None:
    joined = parse_event(
        payload("meeting.participantJoined", participant={"peerId": "p1", "joinedAt": "x"})
    )
    assert (joined.meeting_id, joined.peer_id, joined.title) == ("m-1", "p1", "Standup")
    rec = parse_event(b'{"event": "recording.statusUpdate", "recording": {"fileSize": "12"}}')
    assert rec == Event(name="recording.statusUpdate", meeting_id=None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "body is not valid JSON"),
        (b"\xff\xfe", "body is not valid JSON"),
        (b"[1]", "body is not a JSON object"),
        (b'{"event": "meeting.exploded", "meeting": {"id": "m"}}', "not a known event"),
        (b'{"meeting": {"id": "m"}}', "not a known event: None"),
        (b'{"event": "meeting.started"}', "field meeting is missing"),
        (b'{"event": "meeting.started", "meeting": []}', "field meeting is not an object"),
        (b'{"event": "meeting.started", "meeting": {}}', "field meeting.id is missing"),
        (b'{"event": "meeting.started", "meeting": {"id": "a/b"}}', "meeting.id is not a safe id"),
        (b'{"event": "meeting.started", "meeting": {"id": 7}}', "meeting.id is not a string"),
        (b'{"event": "meeting.ended", "meeting": {"id": "m"}, "reason": 3}', "reason is not a"),
        (b'{"event": "meeting.started", "x": ' + b"9" * 5000 + b"}", "too large"),
        (b'{"event": "meeting.started", "x": 1e999}', "out of range"),
        (b'{"event": "meeting.started", "x": NaN}', "not a JSON number"),
        (b'{"x": ' + b"[" * 33 + b"]" * 33 + b"}", "nested deeper than 32"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 32"),
    ],
)
def test_malformed_events(body: bytes, message: str) -> None:
    with pytest.raises(MalformedEvent, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_event(body)


# --- dedup, stats, health ------------------------------------------------------------------


def test_deduper_forgets_after_24_hours() -> None:
    t = FakeTime()
    dedup = Deduper(clock=t)
    assert not dedup.seen_before("d1")
    t.now += 86_399
    assert dedup.seen_before("d1")
    t.now += 1  # 24 h after it was first seen
    assert not dedup.seen_before("d1")
    assert len(dedup) == 1


def test_deduper_memory_is_bounded_oldest_first() -> None:
    dedup = Deduper(max_ids=1000, clock=FakeTime())
    for i in range(5000):
        assert not dedup.seen_before(f"id-{i}")
    assert len(dedup) == 1000
    assert dedup.seen_before("id-4999") and dedup.seen_before("id-4000")
    assert not dedup.seen_before("id-3999")  # evicted
    long_id = "x" * 10_000  # kept as a hash, not 10 kB
    assert not dedup.seen_before(long_id) and dedup.seen_before(long_id)


def test_stats_cap_unknown_app_labels() -> None:
    stats = WebhookStats()
    for i in range(MAX_UNKNOWN_APP_LABELS + 5):
        stats.unknown_app((f"a{i}", "x"))
    stats.unknown_app(("a0", "x"))  # already labelled: stays labelled
    stats.unknown_app(("bad id", "x"))
    requests = stats.snapshot().requests
    assert requests[("a0", "x", "unknown_app")] == 2
    assert requests[("", "", "unknown_app")] == 6
    assert len(requests) == MAX_UNKNOWN_APP_LABELS + 1
    with pytest.raises(ValueError, match="unknown webhook result"):
        stats.request(APP, "ok")


def test_health_transitions() -> None:
    t = FakeTime()
    h = WebhookHealth(quiet_seconds=600, max_bad_signatures=5, clock=t)
    assert not h.healthy(APP, has_live_sessions=False)  # nothing heard yet
    h.accepted(APP)
    assert h.healthy(APP, has_live_sessions=True)
    for _ in range(4):
        h.bad_signature(APP)
    assert h.healthy(APP, has_live_sessions=True)
    h.bad_signature(APP)  # the fifth in a row
    assert not h.healthy(APP, has_live_sessions=False)
    h.verified(APP)  # e.g. a verified duplicate ends the streak
    assert h.healthy(APP, has_live_sessions=True)
    t.now += 601
    assert not h.healthy(APP, has_live_sessions=True)  # quiet during live sessions
    assert h.healthy(APP, has_live_sessions=False)  # quiet without sessions is expected
    h.accepted(APP)
    assert h.healthy(APP, has_live_sessions=True)
    assert not h.healthy(("other", "app"), has_live_sessions=False)


# --- the WSGI app in-process ---------------------------------------------------------------


class Harness:
    """A receiver with a recording sink, driven with minimal environs."""

    def __init__(self, key: rsa.RSAPrivateKey, max_body_bytes: int = 4096) -> None:
        self.key = key
        self.apps = {APP}
        self.t = FakeTime()
        self.events: list[tuple[tuple[str, str], Event]] = []
        self.refetches: list[bool] = []  # the results of the scheduled re-fetches
        self.fetch = Fetcher(well_known_body(key.public_key()))
        self.keys = KeySource(key.public_key(), fetch=self.fetch, clock=self.t)
        self.health = WebhookHealth(quiet_seconds=600, clock=self.t)
        self.app = WebhookReceiver(
            keys=self.keys,
            apps=lambda: self.apps,
            on_event=lambda app, event: self.events.append((app, event)),
            stats=WebhookStats(),
            health=self.health,
            deduper=Deduper(clock=self.t),
            max_body_bytes=max_body_bytes,
            schedule=self.run,
            wall=self.t.wall,
        )

    def run(self, coroutine: Coroutine[Any, Any, bool]) -> None:
        self.refetches.append(asyncio.run(coroutine))

    def post(
        self,
        body: bytes,
        *,
        path: str = PATH,
        method: str = "POST",
        headers: dict[str, str] | None = None,
        signed_by: rsa.RSAPrivateKey | None = None,
        delivery: str | None = None,
        content_length: str | None = None,
        terminated: bool = False,
    ) -> tuple[int, str]:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "CONTENT_LENGTH": str(len(body)) if content_length is None else content_length,
            "wsgi.input": io.BytesIO(body),
        }
        if terminated:
            environ["wsgi.input_terminated"] = True
        if headers is None:
            headers = {"HTTP_RTK_SIGNATURE": sign(signed_by or self.key, body)}
            if delivery:
                headers["HTTP_RTK_UUID"] = delivery
        environ.update(headers)
        status: list[str] = []
        answer = b"".join(self.app(environ, lambda s, h: status.append(s)))
        return int(status[0].split()[0]), answer.decode()

    def results(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for (_, _, result), n in self.app.stats.snapshot().requests.items():
            totals[result] = totals.get(result, 0) + n
        return totals


@pytest.fixture
def harness(private_key: rsa.RSAPrivateKey) -> Harness:
    return Harness(private_key)


def test_accepted_event_reaches_the_sink_and_counters(harness: Harness) -> None:
    assert harness.post(payload(), delivery="d1") == (200, "accepted\n")
    [(app, event)] = harness.events
    assert app == APP and event.name == "meeting.started" and event.session_id == "s-1"
    snap = harness.app.stats.snapshot()
    assert snap.requests == {("acc1", "app1", "accepted"): 1}
    assert snap.events == {("acc1", "app1", "meeting.started"): 1}
    assert snap.last_event == {APP: harness.t.wall()}
    assert harness.health.healthy(APP, has_live_sessions=True)


def test_replayed_delivery_is_a_duplicate_without_effect(harness: Harness) -> None:
    body = payload()
    assert harness.post(body, delivery="d1")[0] == 200
    assert harness.post(body, delivery="d1") == (200, "duplicate\n")
    # A replay of the same delivery to another configured path is a duplicate too.
    harness.app._apps = lambda: {APP, ("acc1", "app2")}
    assert harness.post(body, delivery="d1", path="/webhooks/acc1/app2")[1] == "duplicate\n"
    assert len(harness.events) == 1
    assert harness.results() == {"accepted": 1, "duplicate": 2}


def test_dyte_header_names_are_accepted(harness: Harness, private_key: rsa.RSAPrivateKey) -> None:
    body = payload("meeting.participantLeft", participant={"peerId": "p"})
    dyte = {"HTTP_DYTE_SIGNATURE": sign(private_key, body), "HTTP_DYTE_UUID": "d9"}
    assert harness.post(body, headers=dyte) == (200, "accepted\n")
    assert harness.post(body, headers=dyte) == (200, "duplicate\n")


@pytest.mark.parametrize("case", ["missing", "tampered", "wrong_key", "garbage"])
def test_bad_signatures_are_401_and_change_nothing_else(
    harness: Harness, other_key: rsa.RSAPrivateKey, case: str
) -> None:
    body = payload()
    headers = {
        "missing": {},
        "tampered": {"HTTP_RTK_SIGNATURE": sign(harness.key, body.replace(b"m-1", b"m-9"))},
        "wrong_key": {"HTTP_RTK_SIGNATURE": sign(other_key, body)},
        "garbage": {"HTTP_RTK_SIGNATURE": "%%%"},
    }[case]
    assert harness.post(body, headers={**headers, "HTTP_RTK_UUID": "d1"})[0] == 401
    assert harness.events == []
    snap = harness.app.stats.snapshot()
    assert snap.requests == {("acc1", "app1", "bad_signature"): 1}
    assert snap.events == {} and snap.last_event == {}
    # The rejected delivery id was not remembered: the genuine delivery still gets through.
    assert harness.post(body, delivery="d1") == (200, "accepted\n")


def test_bad_signature_is_checked_before_parsing(harness: Harness) -> None:
    assert harness.post(b"not json", headers={"HTTP_RTK_SIGNATURE": "AAAA"})[0] == 401
    assert harness.results() == {"bad_signature": 1}


def test_bad_signatures_schedule_one_refetch_per_ten_minutes(harness: Harness) -> None:
    for _ in range(20):
        assert harness.post(payload(), headers={"HTTP_RTK_SIGNATURE": "AAAA"})[0] == 401
    assert harness.refetches == [False]  # one re-fetch, and it served the same key
    assert harness.fetch.calls == 1
    assert not harness.health.healthy(APP, has_live_sessions=False)
    harness.t.now += 600
    harness.post(payload(), headers={})
    assert harness.refetches == [False, False] and harness.fetch.calls == 2


def test_a_rotated_key_is_picked_up_after_a_failure(
    harness: Harness, other_key: rsa.RSAPrivateKey
) -> None:
    harness.fetch.body = well_known_body(other_key.public_key())
    assert harness.post(payload(), signed_by=other_key)[0] == 401  # old key still in use
    assert harness.refetches == [True]
    assert harness.post(payload(), signed_by=other_key) == (200, "accepted\n")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not valid JSON"),
        (payload("meeting.unheardOf"), "not a known event"),
        (b'{"x": ' + b"[" * 40 + b"]" * 40 + b"}", "nested deeper"),
    ],
)
def test_malformed_and_unknown_events_are_400(
    harness: Harness, body: bytes, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="exporter.webhooks")
    assert harness.post(body) == (400, "malformed event\n")
    assert harness.events == [] and harness.results() == {"malformed": 1}
    assert message in caplog.text


def test_unknown_app_is_404_with_capped_labels(harness: Harness) -> None:
    assert harness.post(payload(), path="/webhooks/acc1/nope") == (404, "unknown app\n")
    assert harness.post(payload(), path="/webhooks/acc1/no%20pe") == (404, "unknown app\n")
    requests = harness.app.stats.snapshot().requests
    assert requests == {("acc1", "nope", "unknown_app"): 1, ("", "", "unknown_app"): 1}
    assert harness.events == []


def test_paths_and_methods(harness: Harness) -> None:
    for path in ("/", "/webhooks", "/webhooks/acc1", "/webhooks/acc1/app1/x", "/webhooks//app1"):
        assert harness.post(payload(), path=path)[0] == 404
    assert harness.post(payload(), method="GET")[0] == 405
    assert harness.results() == {}


def test_oversized_body_by_content_length(harness: Harness) -> None:
    body = payload(pad="x" * 5000)
    assert harness.post(body) == (413, "body too large\n")
    assert harness.events == [] and harness.results() == {"too_large": 1}


def test_oversized_body_with_a_lying_content_length(harness: Harness) -> None:
    body = payload(pad="x" * 5000)
    # A server that ends the stream itself is read past Content-Length, up to max + 1 bytes.
    assert harness.post(body, content_length="100", terminated=True)[0] == 413
    # Elsewhere only Content-Length bytes are read (reading on would hang an honest client),
    # so a body that is longer than it says is a truncated body whose signature fails.
    assert harness.post(body, content_length="100")[0] == 401
    assert harness.post(payload(), content_length="ten")[0] == 400
    assert harness.results() == {"too_large": 1, "bad_signature": 1, "malformed": 1}


# --- over a real socket --------------------------------------------------------------------


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(harness: Harness) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, harness.app, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def test_over_a_real_socket(harness: Harness, served: str, private_key: rsa.RSAPrivateKey) -> None:
    body = payload()

    def post(content: bytes, **headers: str) -> httpx.Response:
        return httpx.post(served + PATH, content=content, headers=headers, timeout=10)

    assert post(body, **{"rtk-signature": sign(private_key, body), "rtk-uuid": "u1"}).text == (
        "accepted\n"
    )
    assert post(body, **{"dyte-signature": sign(private_key, body), "dyte-uuid": "u1"}).text == (
        "duplicate\n"
    )
    assert post(body, **{"rtk-signature": sign(private_key, body + b"x")}).status_code == 401
    assert post(b"x" * 5000, **{"rtk-signature": "AAAA"}).status_code == 413
    assert httpx.get(served + PATH, timeout=10).status_code == 405
    assert [event.name for _, event in harness.events] == ["meeting.started"]
    assert harness.results() == {
        "accepted": 1,
        "duplicate": 1,
        "bad_signature": 1,
        "too_large": 1,
    }


def test_helpers_are_typed_for_the_simulator() -> None:
    # sign() and well_known_body() are the simulator's side of the contract.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fn: Callable[[rsa.RSAPrivateKey, bytes], str] = sign
    assert verify(parse_well_known(well_known_body(key.public_key())), b"b", fn(key, b"b"))


# --- the real exporter process, the simulator delivering signed webhooks ------------------------

SIM_ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
SIM_APP = "6f0a8a2c3b8e4f62a1d2c3b4e5f60718"


def _webhook_setup(
    start_exporter: Callable[..., Any],
    *,
    interval: float = 30,
    budget: tuple[int, float] = (200, 10),
) -> tuple[Any, Any, int]:
    """A simulator delivering to a real exporter that polls slowly (so only webhooks can
    explain a prompt change)."""
    from exporter.simulator import Simulator

    port = free_port()
    sim = Simulator(
        token=TOKEN,
        meetings=3,
        auto=False,
        seed=2,
        rate_limit=budget,
        webhook_url=f"http://127.0.0.1:{port}/webhooks/{{account_id}}/{{app_id}}",
    )
    sim.start("127.0.0.1", 0)
    config = {
        "api": {
            "base_url": sim.base_url,
            "timeout_seconds": 2,
            "rate_limit": {"requests": budget[0], "period_seconds": budget[1]},
        },
        "poll": {"interval_seconds": interval},
        "webhooks": {"listen_address": f"127.0.0.1:{port}", "public_key_url": sim.webhook_key_url},
        "apps": [
            {
                "account_id": SIM_ACCOUNT,
                "app_id": SIM_APP,
                "meetings": list(sim.meeting_ids),
                "webhooks": {"enabled": True},
            }
        ],
    }
    exporter = start_exporter(config)

    wait_for(lambda: "webhook public key loaded" in exporter.log())
    first = sim.meeting_ids[0]  # polled at start; the others within one interval
    wait_for(lambda: value(exporter.scrape(), "realtimekit_up", meeting_id=first) == 1)
    return sim, exporter, port


def _live(exporter: Any, meeting: str) -> float | None:

    return value(exporter.scrape(), "realtimekit_session_status", meeting_id=meeting, status="LIVE")


def test_a_start_and_an_end_reach_metrics_within_a_second(start_exporter):

    sim, exporter, _ = _webhook_setup(start_exporter)
    try:
        meeting = sim.meeting_ids[0]
        assert _live(exporter, meeting) is None  # idle: polled once, next poll in 30 s
        sim.set_participants(meeting, 3)  # meeting.started + 3 joined, delivered at once
        wait_for(lambda: _live(exporter, meeting) == 1, timeout=1.5, interval=0.05)
        # the prompt poll fills in the numbers
        wait_for(
            lambda: (
                value(
                    exporter.scrape(), "realtimekit_session_live_participants", meeting_id=meeting
                )
                == 3
            ),
            timeout=5,
        )
        sim.end_session(meeting)
        wait_for(lambda: _live(exporter, meeting) == 0, timeout=1.5, interval=0.05)
        samples = exporter.scrape()
        assert value(samples, "realtimekit_session_live_participants", meeting_id=meeting) == 0
        assert value(samples, "realtimekit_webhook_requests_total", result="accepted") >= 5
        assert value(samples, "realtimekit_webhook_events_total", event="meeting.started") == 1
        assert value(samples, "realtimekit_webhook_refreshes_total") >= 1
    finally:
        sim.stop()


def test_a_bad_signature_changes_nothing_but_its_counter(start_exporter):

    sim, exporter, port = _webhook_setup(start_exporter)
    try:
        meeting = sim.meeting_ids[0]
        before = exporter.metrics_text()
        body = payload("meeting.started", meeting={"id": meeting, "sessionId": "forged"})
        url = f"http://127.0.0.1:{port}/webhooks/{SIM_ACCOUNT}/{SIM_APP}"
        answers = [
            httpx.post(url, content=body, headers={"rtk-signature": sig, "rtk-uuid": f"u{i}"})
            for i, sig in enumerate(["", "bm9wZQ==", "garbage!"])
        ]
        assert [a.status_code for a in answers] == [401, 401, 401]
        wait_for(lambda: "bad_signature" in exporter.metrics_text())
        after = parse_metrics(exporter.metrics_text())
        old = parse_metrics(before)
        stable = ("realtimekit_session_", "realtimekit_up", "realtimekit_webhook_events")
        for (name, labels), v in after.items():
            if name.startswith(stable):
                assert old.get((name, labels)) == v, (name, labels)
        assert _live(exporter, meeting) is None
    finally:
        sim.stop()


def test_a_storm_of_participant_events_stays_inside_the_budget(start_exporter):

    budget = (30, 10.0)
    sim, exporter, _ = _webhook_setup(start_exporter, interval=5, budget=budget)
    try:
        for round_ in range(40):  # 40 × 3 meetings of join/leave churn within a few seconds
            for i, meeting in enumerate(sim.meeting_ids):
                sim.set_participants(meeting, 1 + (round_ + i) % 4)
        wait_for(
            lambda: sim.webhook_stats()["queued"] == 0 and sim.webhook_stats()["delivered"] >= 120,
            timeout=30,
        )
        refreshes = value(exporter.scrape(), "realtimekit_webhook_refreshes_total")
        assert refreshes is not None and refreshes >= 1
        times = [t for t, _, _ in sim.request_log()]
        assert 429 not in sim.status_counts()
        assert max_in_window(times, budget[1]) <= budget[0]
    finally:
        sim.stop()
