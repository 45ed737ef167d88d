"""Call quality from peer reports, with the network faked at the transport (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from exporter.client import ApiClient, RateLimiter, make_http_client
from exporter.config import App
from exporter.errors import ApiError
from exporter.quality import CallQuality, parse_report, stream_kind
from tests.support.clock import FakeTime

APP = ("acc", "app")
PEER = "0b7a4c1e-peer-secret-1"
PRIVATE = ("203.0.113.77", "AS64500", "Chrome 131", "Ada Lovelace", PEER)


def block(mos: Any = 4.2, loss: Any = 1.5, rtt: Any = 80, jitter: Any = 30) -> dict:
    return {
        "quality_mos": {"avg": mos, "p50": 4, "p75": 4, "p90": 4},
        "packet_loss": {"avg": loss, "5_or_greater_event_fraction": 0},
        "rtt": {"avg": rtt, "100ms_or_greater_event_fraction": 0},
        "jitter_buffer_delay": {"avg": jitter},
    }


def report(**blocks: Any) -> dict:
    quality = {"audio_producer": {"x": 1}, **{f"{k}_cumulative": v for k, v in blocks.items()}}
    return {
        "success": True,
        "data": {
            "participant": {
                "peer_id": PEER,
                "display_name": PRIVATE[3],
                "peer_report": {
                    "metadata": {"ip": PRIVATE[0], "asn": PRIVATE[1], "browser": PRIVATE[2]},
                    "quality": quality,
                },
            }
        },
    }


def parsed(doc: dict) -> Any:
    return parse_report(200, "application/json", json.dumps(doc).encode())


def test_stream_kinds_map_to_media_and_direction():
    assert stream_kind("audio_producer_cumulative") == ("audio", "send")
    assert stream_kind("video_consumer_cumulative") == ("video", "receive")
    assert stream_kind("screenshare_video_producer_cumulative") == ("screenshare", "send")
    assert stream_kind("audio_producer") is None and stream_kind("mystery_cumulative") is None


def test_a_report_gives_one_observation_per_stream_kind_in_the_exported_units():
    got = parsed(
        report(audio_producer=block(), video_consumer=block(mos=2.0, loss=10, rtt=250, jitter=5))
    )
    assert got.invalid == 0
    assert sorted(got.observations["realtimekit_peer_mos"]) == [
        (("audio", "send"), 4.2),
        (("video", "receive"), 2.0),
    ]
    assert dict(got.observations["realtimekit_peer_packet_loss_ratio"])[
        ("video", "receive")
    ] == pytest.approx(0.1)
    assert dict(got.observations["realtimekit_peer_rtt_seconds"])[
        ("audio", "send")
    ] == pytest.approx(0.08)
    assert dict(got.observations["realtimekit_peer_jitter_buffer_delay_seconds"])[
        ("video", "receive")
    ] == pytest.approx(0.005)


def test_nulls_missing_and_out_of_range_values_are_counted_and_skipped_one_by_one():
    got = parsed(
        report(audio_consumer=block(mos=7, loss=-1, rtt=None), video_producer={"rtt": {"avg": 40}})
    )
    assert got.observations["realtimekit_peer_mos"] == []
    assert got.observations["realtimekit_peer_jitter_buffer_delay_seconds"] == [
        (("audio", "receive"), 0.03)
    ]
    assert got.observations["realtimekit_peer_rtt_seconds"] == [(("video", "send"), 0.04)]
    assert got.invalid == 3  # mos 7, loss -1, rtt null; what video_producer lacks is not counted


def test_a_report_without_quality_is_invalid():
    with pytest.raises(ApiError, match="quality"):
        parsed({"success": True, "data": {"participant": {}}})


class World:
    """A fake API that serves reports by peer id: a dict, a status code, or a list of answers."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers, self.asked = answers, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        peer = request.url.path.rsplit("/", 1)[1]
        self.asked.append(peer)
        assert request.url.params["filters"] == "quality_stats"
        answer = self.answers[peer]
        if isinstance(answer, list):
            answer = answer.pop(0)
        if isinstance(answer, int):
            return httpx.Response(answer, json={"success": False, "error": {"message": "nope"}})
        return httpx.Response(200, json=answer)


def quality_app(**quality: Any) -> App:
    return App.model_validate(
        {"account_id": "acc", "app_id": "app", "meetings": [{"id": "m"}], "webhooks": {"enabled": True},
         "quality": {"enabled": True, **quality}}
    )  # fmt: skip


def runs(quality: CallQuality, world: World, times: int) -> list[str]:
    errors = []

    async def go() -> None:
        http = make_http_client(
            timeout_seconds=1, max_connections=1, transport=httpx.MockTransport(world)
        )
        async with http:
            client = ApiClient(
                http, base_url="https://api.test", token="t", limiter=RateLimiter(10**9, 1)
            )
            for _ in range(times):
                try:
                    await quality.apps[APP].run(client)
                except ApiError as err:
                    errors.append(err.reason)

    asyncio.run(go())
    return errors


def left(peer: str) -> dict:
    return {
        "event": "meeting.participantLeft",
        "participant": {"peerId": peer, "userDisplayName": PRIVATE[3]},
    }


def setup(clock: FakeTime, **rules: Any) -> CallQuality:
    quality = CallQuality(clock, rng=lambda: 0.5)
    pulls = quality.plan([quality_app(**rules)])
    assert [(kind, every) for _, kind, every, _ in pulls] == [
        ("peer_reports", 3600 / (rules.get("max_reports_per_hour", 600)))
    ]
    return quality


def values(quality: CallQuality) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in quality.collect()
        for s in m.samples
    }


def test_a_left_peer_is_fetched_after_the_delay_and_observed():
    clock = FakeTime(1000.0)
    quality = setup(clock, delay_seconds=60)
    assert quality.take_event(APP, "meeting.participantLeft", left(PEER))
    world = World({PEER: report(audio_producer=block(), audio_consumer=block(mos=3.1))})
    runs(quality, world, 1)
    assert world.asked == []  # not due yet
    clock.advance(60)
    runs(quality, world, 2)
    assert world.asked == [PEER]  # once
    got = values(quality)
    recv = (("account_id", "acc"), ("app_id", "app"), ("direction", "receive"), ("media", "audio"))
    assert got[("realtimekit_peer_mos_count", recv)] == 1
    assert got[("realtimekit_peer_mos_bucket", tuple(sorted((*recv, ("le", "3.0")))))] == 0
    assert got[("realtimekit_peer_mos_bucket", tuple(sorted((*recv, ("le", "3.5")))))] == 1
    assert got[("realtimekit_peer_mos_bucket", tuple(sorted((*recv, ("le", "+Inf")))))] == 1
    assert (
        got[
            (
                "realtimekit_peer_reports_total",
                (("account_id", "acc"), ("app_id", "app"), ("result", "fetched")),
            )
        ]
        == 1
    )
    assert not any(p in json.dumps([list(k) for k in got]) for p in PRIVATE)


def test_a_missing_report_is_retried_twice_then_counted_missing_and_others_fail():
    clock = FakeTime(0.0)
    quality = setup(clock, delay_seconds=0)
    quality.take_event(APP, "meeting.participantLeft", left("p404"))
    quality.take_event(APP, "meeting.participantLeft", left("p500"))
    world = World({"p404": [404, 404, 404], "p500": 500})
    assert runs(quality, world, 2) == ["http_5xx"]
    for _ in range(2):
        clock.advance(60)
        runs(quality, world, 1)
    assert world.asked.count("p404") == 3 and world.asked.count("p500") == 1
    results = {
        k[1][2][1]: v
        for k, v in values(quality).items()
        if k[0] == "realtimekit_peer_reports_total"
    }
    assert results == {"fetched": 0, "missing": 1, "failed": 1, "skipped": 0}


def test_a_storm_of_leaves_stays_bounded_and_is_counted_skipped():
    clock = FakeTime(0.0)
    quality = setup(clock, max_reports_per_hour=600)
    for i in range(10_000):
        quality.take_event(APP, "meeting.participantLeft", left(f"peer-{i}"))
    quality.take_event(APP, "meeting.participantLeft", left("peer-1"))  # a repeat: not twice
    assert quality.apps[APP].pending() == 600
    assert quality.apps[APP].results["skipped"] == 9400


def test_sampling_skips_the_rest():
    clock = FakeTime(0.0)
    quality = setup(clock, sample_fraction=0.25)  # the rng says 0.5: not sampled
    quality.take_event(APP, "meeting.participantLeft", left(PEER))
    assert quality.apps[APP].pending() == 0 and quality.apps[APP].results["skipped"] == 1


def test_other_events_and_apps_without_quality_are_ignored():
    clock = FakeTime(0.0)
    quality = setup(clock)
    assert not quality.take_event(APP, "meeting.participantJoined", left(PEER))
    assert not quality.take_event(("acc", "other"), "meeting.participantLeft", left(PEER))
    assert not quality.take_event(APP, "meeting.participantLeft", {"participant": {}})
    quality.take_event(APP, "meeting.participantLeft", left("../../etc"))  # not a safe id
    assert quality.apps[APP].pending() == 0
