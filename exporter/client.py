"""The RealtimeKit API client: builds request URLs from validated ids, sends them with the token
through the token's :class:`RateLimiter`, and hands back parsed answers or
:class:`~exporter.errors.ApiError`.

It knows nothing about Prometheus: what it counts goes into a
:class:`~exporter.health.RequestStats` that the collector exports. Every network or protocol
failure of httpx is translated here into an ``ApiError`` whose ``reason`` is one of
:data:`~exporter.errors.REASONS`.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

import httpx

from exporter import __version__
from exporter.errors import TOKEN_REASONS, ApiError
from exporter.health import RequestStats
from exporter.limiter import RateLimiter
from exporter.limiter.local import header_value
from exporter.model import Answer, MeetingKey, parse_active_session, parse_sessions_page
from exporter.paging import Listing, PageModel, Walk, list_params

#: Answers larger than this (decompressed) are not read to the end: ``invalid_response``.
MAX_BODY_BYTES: Final = 1 << 20
USER_AGENT: Final = f"realtimekit-exporter/{__version__}"
#: We decode these ourselves, counting decompressed bytes (so a zip bomb stops at the cap).
ACCEPT_ENCODING: Final = "gzip, deflate"
#: The whole-request timeout when the httpx client has none.
DEFAULT_TIMEOUT_SECONDS: Final = 10.0


def make_http_client(
    *,
    timeout_seconds: float,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The one shared ``httpx.AsyncClient``: timeouts always set, connection pool bounded."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_seconds),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
        },
        follow_redirects=False,
        transport=transport,
    )


@dataclass(frozen=True, slots=True)
class RawAnswer:
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str]


class _Body:
    """Collects an answer's raw bytes, decompressing gzip/deflate incrementally, and fails as
    soon as more than ``limit`` (decompressed) bytes arrive: never holds much more than that."""

    def __init__(self, encoding: str, limit: int, status: int) -> None:
        self._limit, self._status, self._size = limit, status, 0
        self._chunks: list[bytes] = []
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            self._inflate = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            self._inflate = zlib.decompressobj(zlib.MAX_WBITS | (16 if "gzip" in encoding else 0))
        else:
            raise ApiError(
                "invalid_response", f"unsupported content-encoding {encoding[:40]!r}", status=status
            )

    def feed(self, data: bytes) -> None:
        if self._inflate is None:
            self._keep(data)
            return
        try:
            while data and not self._inflate.eof:  # each turn consumes all or fills the room
                self._keep(self._inflate.decompress(data, self._limit - self._size + 1))
                data = self._inflate.unconsumed_tail
        except zlib.error:
            raise ApiError(
                "invalid_response", "answer could not be decoded", status=self._status
            ) from None

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise ApiError(
                "invalid_response", f"answer larger than {self._limit} bytes", status=self._status
            )
        self._chunks.append(data)

    def bytes(self) -> bytes:
        # Nothing is left inside the decompressor: each feed drained it (no unconsumed tail).
        return b"".join(self._chunks)


T = TypeVar("T")


def _parse(parse: Callable[..., T], raw: RawAnswer, **kw: int) -> T:
    """Run a parser of :mod:`exporter.model` on an answer; whatever it cannot read is
    ``invalid_response``, never an uncaught exception."""
    try:
        return parse(raw.status, raw.content_type, raw.body, **kw)
    except (RecursionError, OverflowError, ValueError, TypeError, KeyError) as err:
        raise ApiError(
            "invalid_response", f"answer could not be read: {type(err).__name__}", status=raw.status
        ) from None


class ApiClient:
    """Reads the RealtimeKit API with one token. Several clients may share one ``httpx`` client.

    ``timeout_seconds`` bounds each request from connect to last byte (the wait for a slot of
    the budget is not part of it); by default the longest timeout of the httpx client.
    ``token_name`` is how failures of the token (:data:`~exporter.errors.TOKEN_REASONS`) name it.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        token: str,
        limiter: RateLimiter | None = None,
        stats: RequestStats | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        timeout_seconds: float | None = None,
        timer: Callable[[], float] = time.perf_counter,
        token_name: str = "the API token",
    ) -> None:
        self._http = http
        self.token_name = token_name
        self._base = base_url.rstrip("/")
        self._headers = {"Accept-Encoding": ACCEPT_ENCODING}
        if token:  # none for a public document (the webhook key)
            self._headers["Authorization"] = f"Bearer {token}"
        self._max_body = max_body_bytes
        self._timeout = timeout_seconds or _longest(http.timeout)
        self._timer = timer
        self._paging: dict[tuple[str, str], PageModel] = {}
        self.limiter = limiter or RateLimiter(1200, 300)
        self.stats = stats or RequestStats()

    def __repr__(self) -> str:  # never show the token
        return f"ApiClient(base_url={self._base!r})"

    async def get_active_session(self, key: MeetingKey) -> Answer:
        """``GET …/meetings/{id}/active-session``: a Session, NO_ACTIVE_SESSION, or ApiError
        (``not_found`` for a 404 that is not "no active session")."""
        path = (
            f"/accounts/{key.account_id}/realtime/kit/{key.app_id}"
            f"/meetings/{key.meeting_id}/active-session"
        )
        return await self._answer(parse_active_session, path)

    def page_size(self, account_id: str, app_id: str) -> int | None:
        """How many items the app's ``/sessions`` pages were seen to hold (``None`` until a walk
        has proved a page full): a server may serve fewer than ``per_page`` asks, so a bound on
        pages is best computed from this."""
        model = self._paging.get((account_id, app_id))
        return model.size if model is not None else None

    async def list_live_sessions(
        self, account_id: str, app_id: str, *, per_page: int, max_pages: int
    ) -> Listing:
        """``GET …/sessions?status=LIVE`` page by page, at most ``max_pages`` requests.

        The walk goes on until the unique sessions collected (unreadable ones included) reach
        ``total_count``, or a page is empty, or the last one by its ``end_offset`` — a short page
        proves nothing when the server gives a count, as it may serve fewer items than asked.
        Without any ``paging`` a page shorter than ``per_page`` ends it too. The page base (0 or
        1) and the real page size are learned from the reported offsets, remembered per app and
        re-checked on every page: a page 1 that does not start at item 1 (or is empty while
        ``total_count`` > 0) has page 0 read too. Sessions are de-duplicated by id, so one that
        moves across a page boundary while we read (others starting or ending) counts once.

        ``complete`` is True when the walk saw every session: as many as ``total_count`` when
        it is known (and it did not change between pages: sessions that end while we read shift
        others onto pages already read), else when the walk ended on an empty or short page.
        """
        path = f"/accounts/{account_id}/realtime/kit/{app_id}/sessions"
        model = self._paging.setdefault((account_id, app_id), PageModel())
        walk = Walk(model, per_page, f"account_id={account_id} app_id={app_id}")
        page_no: int | None = model.base
        pages = 0
        while page_no is not None and pages < max_pages:
            pages += 1
            try:
                params = list_params(per_page, page_no)
                page = await self._answer(parse_sessions_page, path, params, page_no=page_no)
            except ApiError:
                if not walk.ended:
                    raise
                break  # the last-resort page 0 failed: the walk stays as it was
            page_no = walk.add(page_no, page)
        return walk.listing(pages)

    async def _answer(
        self,
        parse: Callable[..., T],
        path: str,
        params: Mapping[str, str | int] | None = None,
        **kw: int,
    ) -> T:
        """:meth:`get` and a parser of :mod:`exporter.model`; a failure of the token's own says
        which token it is."""
        try:
            return _parse(parse, await self.get(path, params), **kw)
        except ApiError as err:
            if err.reason in TOKEN_REASONS:
                err.token = self.token_name
            raise

    async def get(self, path: str, params: Mapping[str, str | int] | None = None) -> RawAnswer:
        """Wait for a slot of the token's budget, send one GET and read the answer (at most
        ``max_body_bytes`` decompressed), all of it within ``timeout_seconds``."""
        await self.limiter.acquire()
        request = self._http.build_request(
            "GET", self._base + path, params=params, headers=self._headers
        )
        self.stats.started()
        started = self._timer()
        code = "error"
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._http.send(request, stream=True)
                code = str(response.status_code)
                try:
                    self.limiter.observe(response.status_code, response.headers)
                    body = await self._read(response)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            code = "timeout"
            raise ApiError("timeout", f"no complete answer within {self._timeout:g}s") from None
        except httpx.TransportError as err:
            code = "connect" if code == "error" else code
            raise ApiError("connect", f"connection failed: {type(err).__name__}") from None
        finally:
            self.stats.finished(code, self._timer() - started)
        return RawAnswer(
            status=response.status_code,
            content_type=response.headers.get("content-type", ""),
            body=body,
            headers=response.headers,
        )

    async def _read(self, response: httpx.Response) -> bytes:
        encoding = header_value(response.headers, "content-encoding")
        if response.is_stream_consumed:  # the transport handed over a body already decoded
            encoding = ""
        body = _Body(encoding, self._max_body, response.status_code)
        if response.is_stream_consumed:
            body.feed(response.content)
        else:
            async for chunk in response.aiter_raw():
                body.feed(chunk)
        return body.bytes()


def _longest(timeout: httpx.Timeout) -> float:
    parts = (timeout.connect, timeout.read, timeout.write, timeout.pool)
    return max((p for p in parts if p is not None), default=DEFAULT_TIMEOUT_SECONDS)
