"""The store's staleness rules (issue 22 items 1 and 2), without sockets."""

from __future__ import annotations

from exporter.errors import ApiError
from exporter.model import NO_ACTIVE_SESSION, MeetingKey, Session
from exporter.store import Store, stale_windows

KEY = MeetingKey("acc", "app", "m1")
LIVE = Session(id="s1", status="LIVE", live_participants=2.0)


def test_windows_scale_the_configured_rule_to_the_effective_interval_with_a_floor() -> None:
    windows = stale_windows(
        {("acc", "slow"): 300.0, ("acc", "app"): 30.0, ("acc", "fast"): 10.0},
        stale_after=90,
        interval=30,
    )
    assert windows == {("acc", "slow"): 900.0, ("acc", "app"): 90.0, ("acc", "fast"): 90.0}


def test_a_longer_window_applies_at_once_a_shorter_one_from_the_next_poll() -> None:
    store = Store()
    store.set_targets({KEY: ()})
    store.record(KEY, LIVE, 0.1, 1000.0)
    assert store.get(KEY).fresh_answer(1100.0, 90) is None  # type: ignore[union-attr]
    store.set_windows({KEY.app: 900.0})  # webhooks healthy: polled every 300 s
    assert store.get(KEY).fresh_answer(1800.0, 90) == LIVE  # type: ignore[union-attr]
    store.set_windows({KEY.app: 90.0})  # back to 30 s: what was known stays until its next poll
    assert store.get(KEY).fresh_answer(1800.0, 90) == LIVE  # type: ignore[union-attr]
    store.record(KEY, NO_ACTIVE_SESSION, 0.1, 1810.0)
    state = store.get(KEY)
    assert state is not None and state.stale_after == 90.0
    assert state.fresh_answer(1901.0, 90) is None
    # a meeting added later starts with its app's window
    other = MeetingKey("acc", "app", "m2")
    store.merge(add={other: ()}, record=[(other, LIVE, 0.1, 2000.0)])
    assert store.get(other).fresh_answer(2080.0, 30) == LIVE  # type: ignore[union-attr]


def test_a_pushed_state_never_moves_last_success_and_lasts_until_the_next_poll() -> None:
    store = Store()
    store.set_targets({KEY: ()})
    store.record(KEY, NO_ACTIVE_SESSION, 0.1, 1000.0)
    store.record(KEY, ApiError("auth", "401"), 0.1, 1001.0)
    assert store.push(KEY, LIVE, 1050.0)  # meeting.started while polls fail
    state = store.get(KEY)
    assert state is not None
    assert (state.last_success, state.up, state.event_at) == (1000.0, False, 1050.0)
    assert state.fresh_answer(1060.0, 30) == LIVE  # what the event said, for now
    store.record(KEY, ApiError("auth", "401"), 0.1, 1061.0)  # the next poll fails
    state = store.get(KEY)
    assert state is not None and state.event_at is None and state.last_success == 1000.0
    assert state.fresh_answer(1062.0, 30) is None  # stale: nothing valid for 62 s
    assert not store.push(MeetingKey("acc", "app", "unknown"), LIVE, 1070.0)


def test_a_push_counts_a_meeting_never_polled_as_up_but_never_turns_a_failure_up() -> None:
    store = Store()
    store.set_targets({KEY: ()})
    store.push(KEY, LIVE, 1000.0)
    state = store.get(KEY)
    assert state is not None and state.up is True and state.last_success is None
    store.record(KEY, ApiError("http_5xx", "503"), 0.1, 1001.0)
    store.push(KEY, LIVE, 1002.0)
    assert store.get(KEY).up is False  # type: ignore[union-attr]
