"""What the simulator sends back: the answer record, RealtimeKit's and Cloudflare's envelopes, and
the bodies of the hostile faults (a gzip bomb, an 80 KiB header, JSON nested 10,000 deep)."""

from __future__ import annotations

import functools
import json
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

JSON = "application/json; charset=utf-8"
HTML = "text/html; charset=utf-8"
_HUGE_HEADER_BYTES = 80 * 1024
_LONG_NAME_BYTES = 900 * 1024
_DEEP_JSON_DEPTH = 10_000
_DEEP_MARK = "\x00deep-json\x00"  # stands in for the nesting until the body is serialised
_BOMB_UNIT, _BOMB_UNITS = 1 << 20, 1024  # 1 GiB of zeros


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    reset: bool = False
    stream: Iterable[bytes] | None = None  # sent instead of body, written chunk by chunk
    length: int | None = None  # Content-Length of a stream; None: chunked transfer encoding


def dumps(obj: object) -> bytes:
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (`lone_surrogate`): JSON escapes it, validly
        return json.dumps(obj, separators=(",", ":")).encode()


def cf_error(status: int, code: int, message: str) -> Answer:
    """Cloudflare's edge error shape (bad token, rate limit, unknown route)."""
    body = {"success": False, "errors": [{"code": code, "message": message}], "messages": []}
    return Answer(status, dumps({**body, "result": None}))


def rtk_error(status: int, message: str) -> Answer:
    """RealtimeKit's own error shape (no active session, meeting not found)."""
    error = {"code": status, "message": message}
    return Answer(status, dumps({"success": False, "error": error}))


def ok(payload: dict[str, Any]) -> Answer:
    return Answer(200, envelope(payload))


def control(status: int, payload: dict[str, Any]) -> Answer:
    """An answer of the control endpoints (``/_sim/…``)."""
    return Answer(status, dumps(payload))


def envelope(payload: dict[str, Any]) -> bytes:
    """Serialise an answer; a `deep_json` marker becomes JSON nested 10,000 deep."""
    body = dumps(payload)
    mark = dumps(_DEEP_MARK)
    if mark in body:
        deep = b"[" * _DEEP_JSON_DEPTH + b"]" * _DEEP_JSON_DEPTH
        body = body.replace(mark, deep, 1)
    return body


def break_types(d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "id": 12345, "live_participants": str(d["live_participants"])}


# A session field fault: how it changes one session object as served.
FIELD_FAULTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "wrong_types": break_types,
    "huge_int": lambda d: {**d, "live_participants": 10**400},
    "long_name": lambda d: {**d, "meeting_display_name": "n" * _LONG_NAME_BYTES},
    "lone_surrogate": lambda d: {**d, "meeting_display_name": "Weekly \ud83d sync"},
    "unknown_status": lambda d: {**d, "status": "PAUSED"},
    "deep_json": lambda d: {**d, "meta": _DEEP_MARK},
}


@functools.cache
def huge_ratelimit() -> str:
    """80 KiB of `r=` items and no `t=`: a backtracking parser takes quadratic time on it."""
    return ('"default";' + "r=1;" * (_HUGE_HEADER_BYTES // 4))[:_HUGE_HEADER_BYTES]


@functools.cache
def gzip_bomb() -> tuple[bytes, bytes, bytes, int]:
    """(head, unit, tail, length) of a gzip stream of 1 GiB of zeros: head unit*(N-1) tail.

    After a full flush deflate starts afresh, so every 1 MiB unit compresses to the same ~1 KB and
    the stream is made without ever holding more than one unit of zeros.
    """
    zeros = bytes(_BOMB_UNIT)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    unit = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(_BOMB_UNITS):
        crc = zlib.crc32(zeros, crc)
    head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + unit
    tail = deflate.flush(zlib.Z_FINISH) + struct.pack(
        "<II", crc, (_BOMB_UNIT * _BOMB_UNITS) % 2**32
    )
    return head, unit, tail, len(head) + len(unit) * (_BOMB_UNITS - 1) + len(tail)


def gzip_bomb_chunks() -> Iterator[bytes]:
    head, unit, tail, _ = gzip_bomb()
    yield head
    left = _BOMB_UNITS - 1
    while left:
        n = min(64, left)
        yield unit * n
        left -= n
    yield tail


@functools.lru_cache(maxsize=4096)
def _iso_seconds(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso(t: float) -> str:
    """``2027-01-15T08:00:00.000Z`` for a Unix time."""
    ms = round(t * 1000)
    return f"{_iso_seconds(ms // 1000)}.{ms % 1000:03d}Z"
