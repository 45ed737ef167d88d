"""The running exporter: one immutable :class:`Runtime` (config, tokens, API clients, what to poll)
and the :class:`Service` that starts it, swaps in a new one on reload, and stops it.

A reload reads and validates everything (config file, tokens) in a worker thread, off the event
loop, builds a complete new Runtime, and only then swaps it in, in one step on the loop: the store's
targets, the discovery jobs and the poll jobs all follow the same Runtime. Reload requests that
arrive while one runs are coalesced: a storm of SIGHUPs or ``POST /-/reload`` becomes one more
reload, not fifty.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.appwatch import AppWatch, polls_per_second
from exporter.client import ApiClient, make_http_client
from exporter.config import (
    App,
    Config,
    RateLimit,
    WebhooksConfig,
    load_config,
    read_tokens,
    restart_needed,
)
from exporter.discovery import Discovery, DiscoveryPlan, admits
from exporter.errors import ConfigError
from exporter.events import Event, EventPorts
from exporter.files import off_loop
from exporter.health import CoordinationState, Health
from exporter.limiter import RateLimiter
from exporter.logs import FailureLog, RedactingFilter
from exporter.model import AppKey, MeetingKey, TokenSource
from exporter.poller import SHUTDOWN_GRACE, Poller, PollPlan
from exporter.shard import filter_config, shard_rate_limits, token_name
from exporter.store import Labels, Store, stale_windows
from exporter.webhook_layer import Webhooks

if TYPE_CHECKING:
    from exporter.coordination import Coordinator

log = logging.getLogger("exporter")

#: Seconds a SIGHUP waits before reloading, so that a burst of signals is one reload.
RELOAD_DEBOUNCE = 0.3
Tokens = dict[TokenSource, str]
ClientKey = tuple[TokenSource, str]  # (token source, token)


@dataclass(frozen=True)
class Sharding:
    """Which of ``total`` shards this process is (``--shard``/``--total-shards``)."""

    shard: int = 0
    total: int = 1

    def split(self, config: Config) -> tuple[Config | None, dict[TokenSource, RateLimit]]:
        """This shard's part of ``config`` (``None``: no work) and its part of each token's
        budget (empty: the whole budget)."""
        if self.total == 1:
            return config, {}
        return (
            filter_config(config, self.shard, self.total),
            shard_rate_limits(config, self.shard, self.total),
        )


@dataclass(frozen=True)
class Runtime:
    """Everything a config means at run time; replaced whole by a reload."""

    config: Config  # the whole file, as every shard reads it
    work: Config | None  # this shard's part of it (None: nothing to poll)
    tokens: Tokens
    http: httpx.AsyncClient
    clients: Mapping[AppKey, ApiClient]  # one per token, shared by the apps using it
    by_token: Mapping[ClientKey, ApiClient]
    slots: asyncio.Semaphore  # requests in flight at once

    @property
    def apps(self) -> list[App]:
        return [] if self.work is None else list(self.work.apps)

    def app(self, key: AppKey) -> App | None:
        """This shard's app of that key, if any."""
        return next((app for app in self.apps if app.key == key), None)

    def targets(self) -> dict[MeetingKey, Labels]:
        return {} if self.work is None else self.work.targets()

    def poll_plan(self, intervals: Mapping[AppKey, float] | None = None) -> PollPlan:
        """The per-meeting polls; ``intervals`` slows some apps (healthy webhooks)."""
        discovering = {app.key for app in self.apps if app.discover.enabled}
        meetings = {
            key: self.clients[key.app] for key in self.targets() if key.app not in discovering
        }
        poll = self.config.poll
        return PollPlan(
            meetings, poll.interval_seconds, poll.max_backoff_seconds, self.slots, intervals or {}
        )

    def discovery_plan(self, intervals: Mapping[AppKey, float] | None = None) -> DiscoveryPlan:
        apps = {a.key: (a, self.clients[a.key]) for a in self.apps if a.discover.enabled}
        poll = self.config.poll
        return DiscoveryPlan(
            apps, poll.interval_seconds, poll.stale_after, self.slots, intervals or {}
        )


def build_runtime(
    config: Config,
    tokens: Tokens,
    *,
    health: Health,
    sharding: Sharding | None = None,
    previous: Runtime | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    make_limiter: MakeLimiter | None = None,
) -> Runtime:
    """A Runtime for ``config`` (this shard's part of it). From ``previous``, what is still
    right is kept: the HTTP client (same timeout and pool size), the concurrency bound, and each
    token's budget (a 429 pause included) when the token and the budget did not change."""
    work, limits = (sharding or Sharding()).split(config)
    api, poll = config.api, config.poll
    same_http = previous is not None and (
        previous.config.api.timeout_seconds,
        previous.config.poll.concurrency,
    ) == (api.timeout_seconds, poll.concurrency)
    if previous is not None and same_http:
        http, slots = previous.http, previous.slots
    else:
        http = make_http_client(
            timeout_seconds=api.timeout_seconds,
            max_connections=poll.concurrency,
            transport=transport,
        )
        slots = asyncio.Semaphore(poll.concurrency)
    by_token: dict[ClientKey, ApiClient] = {}
    clients: dict[AppKey, ApiClient] = {}
    for app, source in _token_sources(work):
        ident = (source, tokens[source])
        if ident not in by_token:
            budget = limits.get(source, api.rate_limit)
            limiter = (make_limiter or _local_limiter)(tokens[source], budget)
            old = previous.by_token.get(ident) if previous is not None else None
            if old is not None and old.limiter.configured_spacing == limiter.configured_spacing:
                limiter = old.limiter
            by_token[ident] = ApiClient(
                http,
                base_url=api.base_url,
                token=tokens[source],
                limiter=limiter,
                stats=health.requests,
                token_name=token_name(source),
            )
        clients[app.key] = by_token[ident]
    return Runtime(config, work, tokens, http, clients, by_token, slots)


MakeLimiter = Callable[[str, RateLimit], RateLimiter]  # (token, budget) -> its limiter


def _local_limiter(token: str, budget: RateLimit) -> RateLimiter:
    return RateLimiter(
        budget.requests, budget.period_seconds, reserve_fraction=budget.reserve_fraction
    )


def _token_sources(work: Config | None) -> list[tuple[App, TokenSource]]:
    """Each app to poll with the identity of its token."""
    return [] if work is None else [(app, work.token_ref(app).source) for app in work.apps]


class Service:
    """Owns the store, the health numbers, the scheduler and the jobs, and the current Runtime."""

    def __init__(
        self,
        config: Config,
        tokens: Tokens,
        *,
        config_path: str | None,
        redact: RedactingFilter,
        sharding: Sharding | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        redis_password: str | None = None,
    ) -> None:
        self.config_path = config_path  # None: nothing to re-read (the demo)
        self.sharding = sharding or Sharding()
        self.redact = redact
        self.store = Store()
        self.health = Health()
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        failures = FailureLog()
        parts = {"scheduler": self.scheduler, "store": self.store, "health": self.health}
        self.poller = Poller(**parts, failures=failures)
        self.discovery = Discovery(**parts, failures=failures)
        self.watch = AppWatch(self.scheduler, failures)  # recordings, usage, call quality, …
        self._failures = failures
        self._transport = transport
        self.health.set_shard(self.sharding.shard, self.sharding.total)
        self.coordinator = _coordinator(config, redis_password, self.sharding)
        self.leader = self.coordinator is None  # alone, this process always polls
        self.runtime = build_runtime(
            config,
            tokens,
            health=self.health,
            sharding=self.sharding,
            transport=transport,
            make_limiter=self._make_limiter,
        )
        self._retired: list[httpx.AsyncClient] = []  # closed at exit: polls may still use them
        self._reloading: asyncio.Future[tuple[bool, str]] | None = None
        self._again = False
        self._reload_soon = False  # a SIGHUP reload is scheduled
        self._slow: dict[AppKey, float] = {}  # apps polled otherwise: healthy webhooks
        listening = config.webhooks.listen_address is not None
        self.webhooks = webhook_layer(self, config.webhooks) if listening else None

    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def slowed(self) -> frozenset[AppKey]:
        """Apps whose healthy webhooks slow their polling to the reconcile interval."""
        return frozenset(self._slow)

    def start(self) -> None:
        self.scheduler.start()
        self.swap(self.runtime)
        work: list[Coroutine[Any, Any, None]] = []
        if self.webhooks is not None:
            work.append(self.webhooks.run())
        if self.coordinator is not None:
            work.append(self.coordinator.run(lambda: self.store.snapshot()[1], self.on_leader))
        for coroutine in work:
            task = asyncio.get_running_loop().create_task(coroutine)
            _background.add(task)  # cancelled with the others by close()
            task.add_done_callback(_background.discard)

    def swap(self, runtime: Runtime) -> None:
        """Make ``runtime`` the running one: the one place where what is polled changes."""
        if runtime.http is not self.runtime.http:
            self._retired.append(self.runtime.http)
        self.runtime = runtime
        self.redact.secrets.update(runtime.tokens.values())
        intervals = self._slow
        if self.leader:
            discovery_plan, poll_plan = (
                runtime.discovery_plan(intervals),
                runtime.poll_plan(intervals),
            )
        else:  # a standby polls nothing and exports no meeting (sums across replicas stay right)
            discovery_plan = replace(runtime.discovery_plan(), apps={})
            poll_plan = replace(runtime.poll_plan(), meetings={})
        discovered = self.discovery.schedule(discovery_plan)
        self.store.set_targets({**runtime.targets(), **discovered} if self.leader else {})
        self.poller.schedule(poll_plan)
        self._plan_pulls(poll_plan, discovery_plan)
        apps = {app.key for app in runtime.apps}
        self._failures.keep_only(lambda k: k in apps or k in poll_plan.meetings or k in discovered)
        self.health.set_budgets(
            [c.limiter for c in runtime.by_token.values()], runtime.config.poll.interval_seconds
        )
        self._set_windows()

    def _plan_pulls(self, polls: PollPlan, discovery: DiscoveryPlan) -> None:
        """The app-level pulls of a leader's apps, on what the session polls leave."""
        runtime = self.runtime
        discovering = {app: client for app, (_, client) in discovery.apps.items()}
        demand = polls_per_second(polls.meetings, polls.interval_of, discovering)
        apps = runtime.apps if self.leader else []
        self.watch.plan(runtime.config, apps, runtime.clients, demand, runtime.slots)

    def _set_windows(self) -> None:
        """Each app's staleness window, from the intervals just planned (:func:`stale_windows`)."""
        poll = self.runtime.config.poll
        effective = self.health.snapshot().effective_intervals
        self.store.set_windows(stale_windows(effective, poll.stale_after, poll.interval_seconds))

    def coordination_state(self) -> CoordinationState:
        """For the collector: Redis reachable, this replica the leader, errors by operation."""
        assert self.coordinator is not None
        stats = self.coordinator.stats
        return CoordinationState(
            stats.up, self.leader, dict(stats.errors), self.coordinator.conflict
        )

    def _make_limiter(self, token: str, budget: RateLimit) -> RateLimiter:
        if self.coordinator is None:
            return _local_limiter(token, budget)
        return self.coordinator.limiter(
            token, budget.requests, budget.period_seconds, budget.reserve_fraction
        )

    def on_leader(self, leader: bool) -> None:
        """Leadership changed (on the loop). A new leader starts from the states the old one
        mirrored, so it serves complete values at once; a standby stops polling and exporting."""
        log.warning(
            "coordination: this replica is now %s of shard %d",
            "the leader" if leader else "a standby", self.sharding.shard,
        )  # fmt: skip
        self.leader = leader
        if leader and self.coordinator is not None:
            mirrored = self.coordinator.mirrored
            self.discovery.adopt(mirrored)  # the old leader's discovered meetings stay
            self.swap(self.runtime)
            self.store.load(mirrored)
        else:
            self.swap(self.runtime)

    def webhook_health(self, app: AppKey, healthy: bool) -> None:
        """An app's webhooks turned healthy (poll it every ``reconcile_interval_seconds``) or
        unhealthy (at its normal interval again): that app alone is re-planned."""
        assert self.webhooks is not None
        if healthy:
            self._slow[app] = self.webhooks.settings.reconcile_interval_seconds
        else:
            self._slow.pop(app, None)
        if not self.leader:
            return  # a standby polls nothing; a new leader plans with these intervals
        runtime = self.runtime
        if any(a.key == app and a.discover.enabled for a in runtime.apps):
            self.discovery.schedule(runtime.discovery_plan(self._slow))
        else:
            self.poller.retime(self._slow)
        self._set_windows()

    async def reload(self) -> tuple[bool, str]:
        """Re-read the config file and the tokens and swap them in if valid; the outcome is
        logged and returned as ``(ok, message)``. Requests during a reload join one more."""
        if self._reloading is not None:
            self._again = True
            return await asyncio.shield(self._reloading)
        future: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self._reloading = future
        try:
            outcome = await self._reload_once()
            while self._again:  # requests that came during it: one more covers them all
                self._again = False
                outcome = await self._reload_once()
            future.set_result(outcome)
        finally:
            self._reloading = None
            if not future.done():  # cancelled (shutdown): the joiners are cancelled too
                future.cancel()
        return outcome

    async def _reload_once(self) -> tuple[bool, str]:
        if self.config_path is None:
            message = "reload: the demo has no config file to re-read"
            log.error("config reload failed, keeping the running config: %s", message)
            return False, f"reload failed, running config kept: {message}"
        path, running = self.config_path, self.config
        try:
            config, tokens = await off_loop(lambda: _read(path))
            runtime = build_runtime(
                config,
                tokens,
                health=self.health,
                sharding=self.sharding,
                previous=self.runtime,
                transport=self._transport,
                make_limiter=self._make_limiter,
            )
            self.swap(runtime)
        except ConfigError as err:
            self.health.reloaded(False)
            log.error("config reload failed, keeping the running config: %s", err)
            return False, f"reload failed, running config kept: {err}"
        except Exception:  # a bug: keep serving the old config, keep the traceback
            self.health.reloaded(False)
            log.exception("config reload failed, keeping the running config")
            return False, "reload failed (internal error), running config kept"
        self.health.reloaded(True)
        if (restart := restart_needed(running, config)) is not None:
            log.warning(restart)
        for warning in config.warnings():
            log.warning(warning)
        message = (
            f"config reloaded: {len(config.apps)} app(s), {len(config.targets())} listed "
            f"meeting(s), poll every {config.poll.interval_seconds:g}s"
        )
        log.info(message)
        return True, message

    def request_reload(self) -> None:
        """SIGHUP: reload :data:`RELOAD_DEBOUNCE` seconds from now; signals until then (a
        storm) are covered by that one reload, and any reload under way is joined."""
        if self._reload_soon:
            return
        self._reload_soon = True
        task = asyncio.get_running_loop().create_task(self._reload_later())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _reload_later(self) -> None:
        await asyncio.sleep(RELOAD_DEBOUNCE)
        self._reload_soon = False
        await self.reload()

    async def close(self) -> None:
        """Stop scheduling, give in-flight polls :data:`SHUTDOWN_GRACE` seconds, cancel the
        rest, close the HTTP clients."""
        self.scheduler.pause()
        # Let jobs submitted just before the pause start: cancelled unstarted, they would miss
        # their own shutdown handling and APScheduler would log them as failed jobs.
        await asyncio.sleep(0)
        await self.poller.drain(SHUTDOWN_GRACE)
        self.scheduler.shutdown(wait=False)
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1)
        for http in {id(h): h for h in (self.runtime.http, *self._retired)}.values():
            await http.aclose()
        if self.coordinator is not None:
            await self.coordinator.close()  # releases the lease: a standby takes over at once


_background: set[asyncio.Task[Any]] = set()


def webhook_layer(service: Service, settings: WebhooksConfig) -> Webhooks:
    """The webhook layer of ``service``, given what its events may touch (and nothing more)."""

    def adopt(key: MeetingKey, title: str | None) -> bool:
        """Export a meeting an event says started when its app discovers and its ``include``,
        ``exclude`` and ``name_regex`` admit it (as they would in a listing)."""
        app = service.runtime.app(key.app)
        if app is None or not admits(app.discover, key.meeting_id, title):
            return False
        return bool(service.discovery.adopt([key]))

    def apps(whole: bool) -> list[AppKey]:
        config = service.runtime.config if whole else service.runtime.work
        return [] if config is None else [a.key for a in config.apps if a.webhooks.enabled]

    ports = EventPorts(
        client_of=lambda app: service.runtime.clients.get(app),
        state_of=service.store.get,
        push=service.store.push,
        adopt=adopt,
        refresh=service.poller.refresh,
        pulled=lambda app, event: _pulled(service.watch, app, event),
    )
    return Webhooks(
        settings,
        ports=ports,
        apps=lambda: apps(whole=False),
        elsewhere=lambda: set(apps(whole=True)) - set(apps(whole=False)),
        summary=service.store.app_summary,
        on_health=service.webhook_health,
    )


def _pulled(watch: AppWatch, app: AppKey, event: Event) -> None:
    """An event an app-level pull keeps; a payload it cannot read is one line, never a crash."""
    try:
        watch.take_event(app, event.name, event.body or {})
    except ValueError as err:
        log.warning("webhook %s of account_id=%s app_id=%s skipped: %s", event.name, *app, err)


def _coordinator(config: Config, password: str | None, sharding: Sharding) -> Coordinator | None:
    block = config.coordination
    if block is None:
        return None
    # Imported only when configured: redis and limits cost ~20 MiB of RSS to load.
    from exporter.coordination import CoordinationSettings, Coordinator

    settings = CoordinationSettings(
        redis_url=block.redis_url,
        key_prefix=block.key_prefix,
        lease_seconds=block.lease_seconds,
        password=password,
        ca_file=block.ca_file,
    )
    return Coordinator(settings, shard=str(sharding.shard), apps=[a.key for a in config.apps])


def _read(path: str) -> tuple[Config, Tokens]:
    config = load_config(path)
    return config, read_tokens(config)
