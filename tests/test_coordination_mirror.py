"""Mirrored states read back from Redis are checked like API answers (issue 23, item 10): the
codec alone, a real Debian ``redis-server`` on 127.0.0.1 full of hostile entries, and a real
standby exporter taking over from a mirror someone wrote garbage into. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from exporter.coordination import CoordinationSettings, connect, link_for
from exporter.mirror import StateMirror, decode_state, encode_state
from exporter.model import MeetingKey, Session
from exporter.simulator import Simulator
from exporter.store import MeetingState
from tests.support.api import TOKEN, sim_config
from tests.support.metrics import value
from tests.support.process import ExporterProcess, Exporters, wait_for
from tests.support.redis import RedisServer

NOW = 1_800_000_000.0
LIVE = {"id": "s1", "status": "LIVE", "live_participants": 3}
ZEROS = [0] * len(MeetingState().errors)


def entry(**fields: Any) -> str:
    """A mirrored state as JSON, numbers Python writes as NaN / Infinity included."""
    return json.dumps({"up": True, "last_success": NOW - 5, **fields})


HOSTILE = {
    "negative participants": entry(answer={**LIVE, "live_participants": -5}),
    "NaN participants": entry(answer={**LIVE, "live_participants": math.nan}),
    "1e308 participants": entry(answer={**LIVE, "live_participants": 1e308}),
    "huge peak": entry(answer={**LIVE, "max_concurrent_participants": 1e308}),
    "negative minutes": entry(answer={**LIVE, "minutes_consumed": -1}),
    "infinite start": entry(answer={**LIVE, "started_at": math.inf}),
    "negative counter": entry(errors=[0, -3, *ZEROS[2:]]),
    "huge counter": entry(errors=[10**30, *ZEROS[1:]]),
    "last_success +Inf": entry(last_success=math.inf),
    "last_success NaN": entry(last_success=math.nan),
    "last_success in a year": entry(last_success=NOW + 365 * 86400),
    "negative duration": entry(poll_duration=-1.0),
    "lone surrogate": entry(answer={**LIVE, "meeting_display_name": "Weekly \ud83d sync"}),
    "endless title": entry(answer={**LIVE, "meeting_display_name": "x" * 100_000}),
    "no status": entry(answer={"id": "s1", "live_participants": 1}),
    "not JSON": "{",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_states_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid meeting state"):
        decode_state(HOSTILE[name], NOW)


def test_real_states_pass() -> None:
    session = Session("s1", "LIVE", 3.0, 5.0, 12.5, NOW - 600, "meeting", "Weekly sync", "m1")
    for state in (
        MeetingState(up=True, answer=session, last_success=NOW - 1, poll_duration=0.2),
        MeetingState(up=False, errors=(0, 2, *ZEROS[2:]), labels=(("team", "a"),)),
        MeetingState(up=True, last_success=NOW + 60),  # a replica's clock a minute ahead
    ):
        assert decode_state(encode_state(state), NOW) == state


@pytest.fixture
def server(make_redis: Callable[..., RedisServer]) -> RedisServer:
    return make_redis()


def test_a_mirror_full_of_garbage_gives_the_good_entries_and_one_line(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exporter.coordination")
    good = MeetingKey("acc", "app", "m1")
    state = MeetingState(up=True, last_success=NOW - 1)

    async def main() -> None:
        settings = CoordinationSettings(redis_url=server.url, key_prefix="t")
        client = connect(settings)
        mirror = StateMirror(link_for(settings, client), "0", ttl_ms=60_000, wall=lambda: NOW)
        bad = {f"acc/app/bad{i}": HOSTILE["negative participants"] for i in range(10_000)}
        bad["acc/app/../x"] = encode_state(state).decode()  # not a safe id
        bad["a" * 100_000] = "{}"
        await client.hset("t:state:0", mapping={"acc/app/m1": encode_state(state), **bad})
        for _ in range(3):  # the same garbage every second: said once
            assert await mirror.fetch() == {good: state}
        await client.hdel("t:state:0", *bad)
        assert await mirror.fetch() == {good: state}
        await client.aclose()

    asyncio.run(asyncio.wait_for(main(), timeout=30))
    lines = [r.getMessage() for r in caplog.records if "mirrored meeting states" in r.getMessage()]
    assert len(lines) == 2, lines  # skipped, then none skipped
    assert lines[0].startswith("coordination: t:state:0: 10002 of 10003 mirrored meeting states")
    assert "the first: invalid" in lines[0] and len(lines[0]) < 400
    assert lines[1] == "coordination: t:state:0: 0 of 1 mirrored meeting states skipped"


# --- a real standby taking over from a poisoned mirror ----------------------------------------


def test_a_new_leader_exports_nothing_from_a_poisoned_mirror(
    make_redis: Callable[..., RedisServer], start_exporter: Exporters
) -> None:
    server = make_redis()
    sim = Simulator(token=TOKEN, meetings=4, auto=False, seed=7)
    for i, meeting in enumerate(sim.meeting_ids):
        sim.set_participants(meeting, i + 2)
    sim.start("127.0.0.1", 0)
    try:
        config = sim_config(sim, stale_after_seconds=600)
        config["coordination"] = {"redis_url": server.url, "lease_seconds": 3}
        a, b = start_exporter(config), start_exporter(config)
        for proc in (a, b):
            proc.wait_ready(timeout=30)

        def leader() -> ExporterProcess | None:
            leading = [p for p in (a, b) if value(p.scrape(), "realtimekit_exporter_leader")]
            return leading[0] if len(leading) == 1 else None

        old = wait_for(leader, timeout=20)
        new = b if old is a else a
        for meeting in sim.meeting_ids:  # the new leader's own polls fail: it shows the mirror
            sim.set_fault(meeting, "500")
        os.kill(old.proc.pid, signal.SIGKILL)
        old.proc.wait(5)
        now = repr(time.time() - 5)
        poison = [text.replace(repr(NOW - 5), now) for text in HOSTILE.values()]
        good = entry(answer={**LIVE, "live_participants": 7}).replace(repr(NOW - 5), now)
        account, app = config["apps"][0]["account_id"], config["apps"][0]["app_id"]
        first, *others = sim.meeting_ids
        fields = {f"{account}/{app}/{first}": good}
        fields.update({f"{account}/{app}/{m}": poison[i] for i, m in enumerate(others)})
        with redis.Redis(port=server.port) as client:
            client.hset("realtimekit-exporter:state:0", mapping=fields)  # type: ignore[arg-type]
        wait_for(lambda: value(new.scrape(), "realtimekit_exporter_leader") == 1, timeout=15)
        samples = new.scrape()
        for (name, _), number in samples.items():
            assert math.isfinite(number) and number >= 0, (name, number)
        participants = {
            dict(labels)["meeting_id"]: v
            for (n, labels), v in samples.items()
            if n == "realtimekit_session_live_participants"
        }
        assert participants.pop(first) == 7, "the good entry was taken over"
        assert set(participants.values()) <= {0.0}, participants
        wait_for(lambda: "mirrored meeting states skipped" in new.log(), timeout=5)
        assert new.log().count("mirrored meeting states skipped") == 1
        assert "Traceback" not in new.log()
    finally:
        sim.stop()
