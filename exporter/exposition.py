"""The exposition engine: collectors in, the bytes of a ``/metrics`` body out.

Collectors are handed in explicitly, in output order. One that has ``render_parts`` (the
per-meeting :class:`~exporter.collector.MeetingCollector`) writes its own lines from cached
fragments; every other collector (``process_*``, ``python_*``, the exporter's own health) is
rendered by prometheus_client's encoder for the negotiated format. Joined, the parts are the
bytes prometheus_client would write for the same collectors::

    >>> parts = render([collector], generate_latest, openmetrics=False)
    >>> b"".join(parts) == generate_latest(registry_of(collector))
    True

It knows nothing about HTTP: the server negotiates the format and the encoding and sets the
headers. :class:`PartsGzip` compresses such a body part by part, remembering the parts that did not
change since the last scrape. The helpers at the bottom write lines exactly as prometheus_client
does (its escaping, its float format, its HELP/TYPE headers).
"""

from __future__ import annotations

import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Protocol, runtime_checkable

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

Encoder = Callable[[Any], bytes]  # prometheus_client's generate_latest and friends

OM_EOF: Final = b"# EOF\n"
#: gzip level of /metrics answers: 1, not prometheus_client's 9 (BENCHMARKS.md: on 16 MB, a
#: quarter of the time for 17 % more bytes).
GZIP_LEVEL: Final = 1


@runtime_checkable
class FastCollector(Protocol):
    """A collector that writes its own exposition lines (the same bytes as its ``collect()``)."""

    def render_parts(
        self, *, openmetrics: bool = False, names: frozenset[str] | None = None
    ) -> list[bytes]: ...


def render(
    collectors: Sequence[Collector],
    encoder: Encoder,
    *,
    openmetrics: bool,
    names: frozenset[str] | None = None,
) -> list[bytes]:
    """The body for ``collectors`` as parts to send one after the other. ``names`` keeps only
    the families one of whose sample names is listed (``/metrics?name[]=…``)."""
    out: list[bytes] = []
    others: list[Collector] = []

    def flush() -> None:
        if others:
            text = encoder(_View(list(others), names))
            out.append(text.removesuffix(OM_EOF) if openmetrics else text)
            others.clear()

    for collector in collectors:
        if isinstance(collector, FastCollector):
            flush()
            out.extend(collector.render_parts(openmetrics=openmetrics, names=names))
        else:
            others.append(collector)
    flush()
    if openmetrics:
        out.append(OM_EOF)
    return out


def wanted(names: frozenset[str] | None, family: str, sample_names: Iterable[str]) -> bool:
    """Whether a family passes a ``name[]`` filter: its name or one of its sample names is in
    it (``realtimekit_poll_errors`` and ``realtimekit_poll_errors_total`` both select it)."""
    return names is None or family in names or any(n in names for n in sample_names)


class _View:
    """Some collectors, for prometheus_client's encoders, optionally filtered by name."""

    def __init__(self, collectors: list[Collector], names: frozenset[str] | None) -> None:
        self._collectors = collectors
        self._names = names

    def collect(self) -> Iterable[Metric]:
        for collector in self._collectors:
            for metric in collector.collect():
                if wanted(self._names, metric.name, (s.name for s in metric.samples)):
                    yield metric


class PartsGzip:
    """gzip of a body given as parts, compressing each part on its own (raw deflate ending in a
    sync flush: such streams can be concatenated) and remembering the result for as long as the
    same part (the same bytes object) keeps coming back. A family whose lines did not change
    since the last scrape is not compressed again; one gzip stream of the joined body would
    compress all 16 MB of 10,000 meetings on every scrape.

        >>> gzip.decompress(PartsGzip().compress([b"a", b"b"]))
        b'ab'
    """

    #: Parts smaller than this are compressed every time (headers, other collectors).
    MIN_CACHED = 4096
    _HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no mtime, unknown OS
    _LAST_BLOCK = b"\x03\x00"  # an empty final block

    def __init__(self, level: int = GZIP_LEVEL) -> None:
        self._level = level
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[bytes, bytes]] = {}  # id(part) -> (part, deflated)

    def compress(self, parts: Iterable[bytes]) -> bytes:
        with self._lock:
            old = self._cache
        cache: dict[int, tuple[bytes, bytes]] = {}
        out = [self._HEADER]
        crc = size = 0
        for part in parts:
            if not part:
                continue
            hit = old.get(id(part))
            if hit is None or hit[0] is not part:  # held in the cache, so its id is its own
                compressor = zlib.compressobj(self._level, zlib.DEFLATED, -zlib.MAX_WBITS)
                hit = (part, compressor.compress(part) + compressor.flush(zlib.Z_SYNC_FLUSH))
            if len(part) >= self.MIN_CACHED:
                cache[id(part)] = hit
            out.append(hit[1])
            crc = zlib.crc32(part, crc)
            size += len(part)
        out.append(self._LAST_BLOCK)
        out.append(struct.pack("<II", crc, size & 0xFFFFFFFF))
        with self._lock:
            self._cache = cache  # parts gone from the body leave the cache here
        return b"".join(out)


# Lines as prometheus_client writes them.


#: Halves of a UTF-16 surrogate pair: valid in JSON (``"\\ud83d"``) and in a Python string,
#: not encodable as UTF-8. A pair in the right order is one character by the time it is a str.
_SURROGATES: Final = re.compile("[\ud800-\udfff]")


def encodable(value: str) -> str:
    """``value`` with every lone surrogate replaced by U+FFFD, so that it encodes as UTF-8
    (``"Weekly \\ud83d sync"``, half an emoji, would fail the whole body)."""
    return value if value.isascii() else _SURROGATES.sub("\ufffd", value)


def escape(value: str) -> str:
    """A label value as the exposition formats want it (and prometheus_client writes it), made
    :func:`encodable` first."""
    return encodable(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def label_text(labels: dict[str, str]) -> str:
    """``a="1",b="2"``: sorted by name, like prometheus_client."""
    return ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items()))


def line(name: str, labels: dict[str, str], value: float) -> bytes:
    text = "{" + label_text(labels) + "}" if labels else ""
    return f"{name}{text} {go_float(float(value))}\n".encode()


def header(name: str, kind: str, doc: str, openmetrics: bool) -> bytes:
    """HELP and TYPE lines of a family, escaped as prometheus_client escapes them."""
    doc = doc.replace("\\", r"\\").replace("\n", r"\n")
    if openmetrics:
        doc = doc.replace('"', r"\"")
    elif kind == "counter":
        name += "_total"
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n".encode()


#: How prometheus_client writes a sample value (typed here: the library's function is not).
_go_float: Final[Callable[[float], str]] = floatToGoString
_INF: Final = float("inf")
#: Whole numbers (participant counts) are common; their text is their repr.
_WHOLE: Final = {float(n): repr(float(n)) for n in range(1, 1001)}
#: Go's exponent for a number whose repr has its dot at this index (7 to 16).
_EXPONENTS: Final = tuple(f"e+{dot - 1:02d}" for dot in range(17))


def go_float(value: float) -> str:
    """prometheus_client's ``floatToGoString`` for a float, faster for what we export."""
    text = _WHOLE.get(value)
    if text is not None:
        return text
    if 1e6 <= value < 1e16:  # where Go writes an exponent and Python's repr does not
        text = repr(value)
        dot = text.find(".")
        digits = (text[:dot] + text[dot + 1 :]).rstrip("0")
        mantissa = digits[0] + "." + digits[1:] if len(digits) > 1 else digits
        return mantissa + _EXPONENTS[dot]
    if -_INF < value < _INF:
        return repr(value)
    return _go_float(value)  # infinities and NaN
