"""The RealtimeKit API client: builds request URLs from validated ids, sends them with the token,
and hands back parsed answers or :class:`~exporter.errors.ApiError`.

It knows nothing about Prometheus. Every network or protocol failure of httpx is translated here
into an ``ApiError`` whose ``reason`` is one of :data:`~exporter.errors.REASONS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import httpx

from exporter import __version__
from exporter.config import MeetingKey
from exporter.errors import ApiError
from exporter.model import Answer, parse_active_session

#: Answers larger than this are not read to the end; they count as ``invalid_response``.
MAX_BODY_BYTES: Final = 1 << 20
USER_AGENT: Final = f"realtimekit-exporter/{__version__}"


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
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        follow_redirects=False,
        transport=transport,
    )


@dataclass(frozen=True, slots=True)
class RawAnswer:
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str]


class ApiClient:
    """Reads the RealtimeKit API with one token. Several clients may share one ``httpx`` client."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        token: str,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {token}"}
        self._max_body = max_body_bytes

    def __repr__(self) -> str:  # never show the token
        return f"ApiClient(base_url={self._base!r})"

    async def get_active_session(self, key: MeetingKey) -> Answer:
        """``GET …/meetings/{id}/active-session``: a Session, NO_ACTIVE_SESSION, or ApiError."""
        path = (
            f"/accounts/{key.account_id}/realtime/kit/{key.app_id}"
            f"/meetings/{key.meeting_id}/active-session"
        )
        raw = await self.get(path)
        return parse_active_session(raw.status, raw.content_type, raw.body)

    async def get(self, path: str, params: Mapping[str, str | int] | None = None) -> RawAnswer:
        """Send one GET and read the answer (at most ``max_body_bytes``)."""
        try:
            request = self._http.build_request(
                "GET", self._base + path, params=params, headers=self._auth
            )
            response = await self._http.send(request, stream=True)
            try:
                body = await self._read(response)
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise ApiError("timeout", "request timed out") from None
        except httpx.TransportError as err:
            raise ApiError("connect", f"connection failed: {type(err).__name__}") from None
        except httpx.DecodingError:
            raise ApiError("invalid_response", "answer could not be decoded") from None
        return RawAnswer(
            status=response.status_code,
            content_type=response.headers.get("content-type", ""),
            body=body,
            headers=response.headers,
        )

    async def _read(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_body:
                raise ApiError(
                    "invalid_response",
                    f"answer larger than {self._max_body} bytes",
                    status=response.status_code,
                )
            chunks.append(chunk)
        return b"".join(chunks)
