"""A wrong token is one log line per token and reason, not one warning per meeting (issue 22
item 9). The real exporter process runs against the simulator, which answers 401 to any other
token than its own; the log lines are counted."""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from exporter.errors import ApiError
from exporter.logs import FailureLog
from exporter.simulator import Simulator
from tests.support.api import TOKEN, sim_config
from tests.support.process import wait_for

MEETINGS = 300
WRONG = "wrong-token-0123456789abcdefghijklmnopqrstuv"
OTHER_APP = "0ther0app0000000000000000000000"


def warnings(log: str, pattern: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if line.startswith("ts=") and "level=warning" in line and re.search(pattern, line)
    ]


def auth_errors(scrape: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> int:
    """Meetings with at least one failed poll of reason ``auth``."""
    return sum(
        1
        for (name, labels), value in scrape.items()
        if name == "realtimekit_poll_errors_total" and ("reason", "auth") in labels and value >= 1
    )


def test_a_wrong_token_is_one_line_per_token_not_one_per_meeting(
    tmp_path: Path, start_exporter: Any
) -> None:
    sim = Simulator(token=TOKEN, meetings=MEETINGS, auto=False, seed=1)
    sim.start("127.0.0.1", 0)
    try:
        token_file = tmp_path / "token"
        token_file.write_text(WRONG + "\n")
        config = sim_config(sim, interval_seconds=5)
        config["api"]["rate_limit"] = {"requests": 100_000, "period_seconds": 10}
        config["poll"]["concurrency"] = 50
        config["apps"][0]["token_file"] = str(token_file)
        config["apps"].append(  # a second token (also wrong) for a discovering app
            {
                "account_id": sim.account_id,
                "app_id": OTHER_APP,
                "token_env": "OTHER_TOKEN",
                "discover": {"enabled": True},
            }
        )
        exporter = start_exporter(config, env={"OTHER_TOKEN": WRONG + "x"})
        wait_for(lambda: auth_errors(exporter.scrape()) == MEETINGS, timeout=60)
        # A second round of polls, so that repeats are seen too.
        wait_for(lambda: sim.request_count() >= 2 * MEETINGS, timeout=60)
        log = exporter.log()
        token_lines = warnings(log, r"reason=auth")
        print(
            f"{len(token_lines)} warning line(s) for {MEETINGS} meetings:", *token_lines, sep="\n"
        )
        assert len(token_lines) == 2, token_lines
        assert any(f"token {token_file} reason=auth status=401" in x for x in token_lines)
        assert any("token $OTHER_TOKEN reason=auth status=401" in x for x in token_lines)
        assert WRONG not in log
        # Every meeting's own failure is still there, at debug.
        debug = [x for x in log.splitlines() if "level=debug" in x and "reason=auth" in x]
        assert len(debug) >= MEETINGS

        # The right token, by reload: one line says the token works again, not one per meeting.
        token_file.write_text(TOKEN + "\n")
        exporter.proc.send_signal(signal.SIGHUP)

        def all_up() -> bool:
            ups = [v for (n, _), v in exporter.scrape().items() if n == "realtimekit_up"]
            return len(ups) == MEETINGS and all(v == 1 for v in ups)

        wait_for(all_up, timeout=60)
        log = exporter.log()
        again = [x for x in log.splitlines() if "work again" in x]
        assert len(again) == 1 and f"token {token_file} work again" in again[0], again
        info_recovered = [
            x for x in log.splitlines() if "level=info" in x and "poll recovered" in x
        ]
        assert info_recovered == [], info_recovered[:3]
    finally:
        sim.stop()


def test_a_paused_budget_is_one_line_per_token_and_other_failures_stay_per_meeting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    failures = FailureLog(logging.getLogger("test.failures"), clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="test.failures")
    for i in range(50):
        err = ApiError("rate_limited", "not sent: paused", token="$CLOUDFLARE_API_TOKEN")
        failures.outcome(("m", i), f"meeting_id=m{i}", err)
    for i in range(3):  # not the token's: each meeting says so
        failures.outcome(("x", i), f"meeting_id=x{i}", ApiError("http_5xx", "HTTP 502"))
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    warned = [m for level, m in lines if level == "WARNING"]
    assert len(warned) == 4, warned
    assert "with token $CLOUDFLARE_API_TOKEN reason=rate_limited" in warned[0]
    assert sum(1 for level, _ in lines if level == "DEBUG") == 49

    caplog.clear()
    for i in range(50):
        failures.outcome(("m", i), f"meeting_id=m{i}", True)
    infos = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert infos == ["polls with token $CLOUDFLARE_API_TOKEN work again (were failing with "
                     "reason=rate_limited)"]  # fmt: skip

    caplog.clear()  # failing again later is news again
    failures.outcome(("m", 0), "meeting_id=m0", ApiError("rate_limited", "x", token="$T"))
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    failures.keep_only(lambda key: False)  # a reload removed every meeting: forgotten
    caplog.clear()
    failures.outcome(("m", 1), "meeting_id=m1", ApiError("rate_limited", "x", token="$T"))
    assert [r.levelname for r in caplog.records] == ["WARNING"]
