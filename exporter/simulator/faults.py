"""Faults of API requests: drawn at random from :class:`FaultConfig` or forced per meeting or
endpoint, and turned into the answer a client meets in the wild."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from exporter.simulator.answers import (
    HTML,
    Answer,
    cf_error,
    gzip_bomb,
    gzip_bomb_chunks,
    huge_ratelimit,
    rtk_error,
)
from exporter.simulator.options import FAULT_KINDS, MEETING_ONLY_FAULTS, FaultConfig, SimOptions
from exporter.simulator.world import seeded


def check_fault(kind: str | None, listing: bool = False) -> None:
    """ValueError unless ``kind`` is a fault (or None); ``listing``: one an app's listing has."""
    kinds = FAULT_KINDS - MEETING_ONLY_FAULTS if listing else FAULT_KINDS
    if kind is not None and kind not in kinds:
        raise ValueError(f"unknown fault {kind!r}; expected one of {sorted(kinds)}")


def too_many(rate_limit: tuple[int, float] | None, retry_after: int) -> Answer:
    limit, window = rate_limit or (1200, 300.0)
    ans = cf_error(429, 971, f"More than {limit} requests per {window:g} seconds reached")
    ans.headers.append(("Retry-After", str(retry_after)))
    return ans


class Faults:
    """Draws faults and makes their answers; ``stop`` ends waiting and streaming answers."""

    def __init__(self, options: SimOptions, stop: threading.Event) -> None:
        self.config: FaultConfig = options.faults
        self._rate_limit = options.rate_limit
        self._stop = stop
        self._rng = seeded(options.seed, "faults")
        self.lock = threading.Lock()

    def draw(self, forced: str | None) -> tuple[str | None, int]:
        """(the fault of this request, the status a ``503`` fault answers with)."""
        with self.lock:
            fault = forced if forced is not None else self._draw()
            status_503 = 503 if fault == "503" and self._rng.random() < 0.5 else 502
        return fault, status_503

    def _draw(self) -> str | None:
        f, r = self.config, self._rng.random()
        for kind, p in (
            ("reset", f.reset),
            ("timeout", f.timeout),
            ("500", f.error_500),
            ("503", f.error_503),
            ("non_json", f.non_json),
            ("wrong_types", f.wrong_types),
        ):
            if r < p:
                return kind
            r -= p
        return None

    def answer(self, fault: str | None, status_503: int, kind: str) -> Answer | None:
        """The answer a fault puts in place of the real one (None: serve it, maybe changed)."""
        if fault == "timeout":
            self._stop.wait(self.config.slow_seconds)
            return None
        if fault == "reset":
            return Answer(0, reset=True)
        if fault == "503":
            page = f"<html><body><h1>{status_503} Service Unavailable</h1></body></html>"
            return Answer(status_503, page.encode(), HTML)
        if fault == "endless":
            opening = b'{"success":true,"data":' + (b'{"sessions":[' if kind == "sessions" else b"")
            return Answer(200, stream=self._endless(opening))
        if fault == "gzip_bomb":
            gzip = [("Content-Encoding", "gzip")]
            return Answer(200, headers=gzip, stream=gzip_bomb_chunks(), length=gzip_bomb()[3])
        simple: dict[str, Callable[[], Answer]] = {
            "500": lambda: rtk_error(500, "Internal Server Error"),
            "401": lambda: cf_error(401, 10000, "Authentication error"),
            "403": lambda: cf_error(403, 9109, "Unauthorized to access requested resource"),
            "429": lambda: too_many(self._rate_limit, 5),
            "retry_after_huge": lambda: too_many(self._rate_limit, 1_000_000_000),
            "not_found": lambda: rtk_error(404, "Meeting not found"),
            "non_json": lambda: Answer(200, b"<html>oops</html>", HTML),
        }
        return simple[fault]() if fault in simple else None

    def dress(self, ans: Answer, fault: str | None) -> Answer:
        """Faults that deliver a valid answer in a hostile way."""
        if fault == "huge_header":
            ans.headers.append(("Ratelimit", huge_ratelimit()))
        elif fault == "trickle":
            ans.stream, ans.length, ans.body = self._trickle(ans.body), len(ans.body), b""
        return ans

    def latency(self) -> None:
        if self.config.latency_seconds > 0:
            self._stop.wait(self.config.latency_seconds)

    def _trickle(self, body: bytes) -> Iterator[bytes]:
        for i in range(len(body)):
            if i and self._stop.wait(self.config.trickle_seconds):
                return
            yield body[i : i + 1]

    def _endless(self, opening: bytes) -> Iterator[bytes]:
        yield opening
        while not self._stop.wait(self.config.trickle_seconds):
            yield b" " * 16  # JSON whitespace: the document stays open for ever
