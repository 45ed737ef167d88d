"""The webhook layer of a running exporter: the public key, the receiver, the effects of accepted
events, and the watch over each app's webhook health.

    >>> webhooks = Webhooks(settings, ports=EventPorts(...), apps=lambda: [("acc", "app")],
    ...                     summary=store.app_summary, on_health=service.webhook_health)
    >>> serve(webhooks.receiver, host, port)   # its own listener: answered in its threads
    >>> await webhooks.run()                   # on the loop: load the key, then watch health

The path of one delivery: listener thread → :class:`~exporter.webhooks.WebhookReceiver` (verify,
de-duplicate, parse, answer) → ``loop.call_soon_threadsafe`` → :meth:`EventEffects.handle` on the
loop → the store and the poller, through the narrow :class:`~exporter.events.EventPorts`. When an
app's webhooks turn healthy or unhealthy, ``on_health(app, healthy)`` is called once; the runtime
then re-plans that app alone (polled every ``reconcile_interval_seconds`` while healthy).

Imports point down only: this module uses :mod:`exporter.webhooks` and :mod:`exporter.events`,
and is used by :mod:`exporter.runtime`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from exporter.client import ApiClient, make_http_client
from exporter.config import WebhooksConfig
from exporter.errors import ApiError, ExporterError
from exporter.events import Event, EventEffects, EventPorts, WebhookHealth
from exporter.files import read_public_key
from exporter.model import AppKey
from exporter.webhooks import KeySource, WebhookReceiver, WebhookStats

log = logging.getLogger("exporter")

#: The public-key fetch: the whole request within this many seconds, at most this many bytes.
KEY_TIMEOUT_SECONDS = 10.0
MAX_KEY_BYTES = 64 << 10
#: The apps with a live session, and those with a failing meeting (``Store.app_summary``).
Summary = Callable[[], tuple[set[AppKey], set[AppKey]]]


class Webhooks:
    """The receiver's parts, the effects of its events, and the health watch (see the module
    docstring). ``apps()`` names the apps whose webhooks this process takes (read from the
    listener's threads, so a reload applies at once); ``elsewhere()`` those another shard takes
    (their deliveries are answered 200 and forwarded nowhere)."""

    #: How often the health of every app's webhooks is checked.
    CHECK_SECONDS = 5.0

    def __init__(
        self,
        settings: WebhooksConfig,
        *,
        ports: EventPorts,
        apps: Callable[[], Collection[AppKey]],
        summary: Summary,
        on_health: Callable[[AppKey, bool], None],
        elsewhere: Callable[[], Collection[AppKey]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.stats = WebhookStats()
        self.health = WebhookHealth(quiet_seconds=2 * settings.reconcile_interval_seconds)
        self.keys = self._key_source(settings)
        self.effects = EventEffects(ports, count_refresh=self.stats.refreshed, clock=clock)
        self._apps = apps
        self._summary = summary
        self._on_health = on_health
        self._loop: asyncio.AbstractEventLoop | None = None
        self.slow: frozenset[AppKey] = frozenset()  # apps polled at the reconcile interval
        self.receiver = WebhookReceiver(
            keys=self.keys,
            apps=self.apps,
            on_event=self._on_event,
            stats=self.stats,
            health=self.health,
            max_body_bytes=settings.max_body_bytes,
            schedule=self._schedule,
            wall=clock,
            elsewhere=elsewhere,
        )

    def _key_source(self, settings: WebhooksConfig) -> KeySource:
        if settings.public_key_file is not None:
            return KeySource(read_public_key(settings.public_key_file, "webhooks.public_key_file"))
        return KeySource(fetch=self._fetch_key)

    async def _fetch_key(self) -> bytes:
        """The well-known key document, read with the bounds of every API answer (the whole
        request within :data:`KEY_TIMEOUT_SECONDS`, at most :data:`MAX_KEY_BYTES` decompressed):
        an endless, dripping or bomb-compressed document is an error, logged by the caller."""
        url = self.settings.public_key_url
        async with make_http_client(timeout_seconds=KEY_TIMEOUT_SECONDS, max_connections=1) as http:
            client = ApiClient(
                http,
                base_url=url,
                token="",  # a public document: no Authorization header
                max_body_bytes=MAX_KEY_BYTES,
                timeout_seconds=KEY_TIMEOUT_SECONDS,
            )
            try:
                answer = await client.get("")
            except ApiError as err:
                raise ApiError(err.reason, f"webhook key {url}: {err}") from None
        if answer.status != 200:
            raise ApiError("invalid_response", f"webhook key {url}: HTTP {answer.status}")
        return answer.body

    def apps(self) -> list[AppKey]:
        """The apps whose webhooks this process takes."""
        return list(self._apps())

    async def run(self) -> None:
        """On the loop until cancelled: load the key (retried after 1, 2, 4 … at most 30 s), then
        check every app's webhook health and report each app whose health changed."""
        self._loop = asyncio.get_running_loop()
        delay = 1.0
        while self.keys.key is None:
            try:
                await self.keys.refresh()
                log.info("webhook public key loaded from %s", self.settings.public_key_url)
            except ExporterError as err:
                log.warning("webhook public key not loaded, retrying in %gs: %s", delay, err)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 30.0)
        while True:
            self.check()
            await asyncio.sleep(self.CHECK_SECONDS)

    def check(self) -> None:
        """Report every app whose webhook health changed since the last check."""
        healthy = self._healthy()
        if healthy == self.slow:
            return
        log.info(
            "webhooks healthy for %d app(s): polling them every %gs",
            len(healthy), self.settings.reconcile_interval_seconds,
        )  # fmt: skip
        flipped = healthy ^ self.slow
        self.slow = healthy
        for app in sorted(flipped):
            self._on_health(app, app in healthy)

    def _healthy(self) -> frozenset[AppKey]:
        """Apps whose webhooks can be trusted and none of whose meetings is failing (a failing
        meeting needs its normal polls and backoff to recover, not the reconcile interval)."""
        live, failing = self._summary()
        return frozenset(
            a
            for a in self.apps()
            if a not in failing and self.health.healthy(a, has_live_sessions=a in live)
        )

    def _schedule(self, work: Coroutine[Any, Any, bool]) -> object:
        if self._loop is None:
            work.close()
            return None
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    def _on_event(self, app: AppKey, event: Event) -> None:
        """From the receiver's thread: do the work on the loop, after the answer went out."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.effects.handle, app, event)
