"""Command line and composition root: parse flags, load config, wire the parts, run until stopped.

realtimekit-exporter --config.file config.yaml
realtimekit-exporter --demo
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from exporter import __version__
from exporter.client import ApiClient, RateLimiter, make_http_client
from exporter.collector import ExporterCollector, MeetingCollector
from exporter.config import Config, load_config, parse_config, read_tokens
from exporter.errors import ConfigError, ExporterError
from exporter.logs import FORMATS, LEVELS, RedactingFilter, setup_logging
from exporter.poller import Poller
from exporter.server import DEFAULT_PORT, create_app, parse_listen_address, serve
from exporter.store import Store
from exporter.webconfig import load_web_config

log = logging.getLogger("exporter")

PROG = "realtimekit-exporter"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Prometheus exporter for Cloudflare RealtimeKit meetings."
    )
    p.add_argument(
        "--config.file",
        dest="config_file",
        default="config.yaml",
        metavar="PATH",
        help="configuration file (default: config.yaml)",
    )
    p.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the configuration and the token's presence, then exit",
    )
    p.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=f":{DEFAULT_PORT}",
        metavar="HOST:PORT",
        help=f"address to serve on (default: :{DEFAULT_PORT}, or 127.0.0.1:{DEFAULT_PORT} in demo)",
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        metavar="PATH",
        help="path of the metrics (default: /metrics)",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default="",
        metavar="PATH",
        help="web config for TLS, basic auth and headers (exporter-toolkit format)",
    )
    p.add_argument("--log.level", dest="log_level", choices=LEVELS, default="info")
    p.add_argument("--log.format", dest="log_format", choices=FORMATS, default="logfmt")
    p.add_argument(
        "--demo",
        action="store_true",
        help="run against a built-in simulated API on loopback (no account needed)",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return p


def fail(message: str) -> int:
    """A user mistake: one line on stderr, no traceback, exit code 1."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


@dataclass
class Runtime:
    """What :func:`run` needs beyond the flags; the demo supplies its own."""

    config: Config
    tokens: dict[tuple[str | None, str | None], str] | None  # by TokenRef.source
    source: str
    cleanup: Any = None  # a callable run at exit (the demo's simulator)


def demo_runtime() -> Runtime:
    """Start the simulator on loopback and make a config that watches its meetings."""
    from exporter.simulator import Simulator

    token = "demo-" + secrets.token_hex(16)
    sim = Simulator(token=token, meetings=6, speed=10.0, seed=7)
    sim.start("127.0.0.1", 0)
    config = parse_config(
        {
            "api": {"base_url": sim.base_url, "timeout_seconds": 4},
            "poll": {"interval_seconds": 5},
            "apps": [
                {
                    "account_id": "023e105f4ecef8ad9ca31a8372d0c353",
                    "app_id": "6f0a8a2c3b8e4f62a1d2c3b4e5f60718",
                    "meetings": [
                        {"id": m, "labels": {"team": ("sales", "support", "eng")[i % 3]}}
                        for i, m in enumerate(sim.meeting_ids)
                    ],
                }
            ],
        }
    )
    tokens = {config.token_ref(config.apps[0]).source: token}
    return Runtime(config, tokens, f"demo simulator at {sim.base_url}", cleanup=sim.stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    redact = RedactingFilter()
    setup_logging(args.log_level, args.log_format, redact=redact)
    try:
        given = sys.argv[1:] if argv is None else argv
        if args.demo and not any(a.startswith("--web.listen-address") for a in given):
            args.listen_address = f"127.0.0.1:{DEFAULT_PORT}"  # the demo stays on loopback
        host, port = parse_listen_address(args.listen_address)
        if not args.telemetry_path.startswith("/") or args.telemetry_path.startswith("/-/"):
            raise ConfigError(
                [
                    f"--web.telemetry-path: {args.telemetry_path!r} must start with / "
                    "and not with /-/"
                ]
            )
        if args.demo:
            runtime = demo_runtime()
        else:
            config = load_config(args.config_file)
            runtime = Runtime(config, None, args.config_file)
    except ConfigError as err:
        if args.config_check:
            print(f"config invalid: {args.config_file}", file=sys.stderr)
            for problem in err.problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        return fail(f"{args.config_file}: {err}")
    config = runtime.config
    problems = []
    if runtime.tokens is None:
        try:
            runtime.tokens = read_tokens(config)
        except ConfigError as err:
            problems = err.problems
    redact.secrets.update((runtime.tokens or {}).values())
    if args.config_check and args.web_config_file:
        try:
            load_web_config(args.web_config_file)
        except ConfigError as err:
            problems += [f"--web.config.file {args.web_config_file}: {p}" for p in err.problems]
    if args.config_check:
        if problems:
            print(f"config invalid: {args.config_file}", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        for warning in config.warnings():
            print(f"warning: {warning}", file=sys.stderr)
        n = len(config.targets())
        sources = sorted({str(config.token_ref(app)) for app in config.apps})
        discovering = sum(app.discover.enabled for app in config.apps)
        print(
            f"config OK: {args.config_file}: {len(config.apps)} app(s) "
            f"({discovering} discovering), {n} listed meeting(s), "
            f"poll every {config.poll.interval_seconds:g}s, token from {', '.join(sources)}"
        )
        return 0
    if problems:
        return fail("; ".join(problems))
    try:
        return asyncio.run(
            run(
                runtime,
                host,
                port,
                args.telemetry_path,
                args.web_config_file,
                config_path=args.config_file,
                redact=redact,
            )
        )
    except OSError as err:
        return fail(f"cannot listen on {args.listen_address}: {err.strerror or err}")
    except ExporterError as err:
        return fail(str(err))
    finally:
        if runtime.cleanup is not None:
            runtime.cleanup()


ClientKey = tuple[tuple[str | None, str | None], str]  # (token source, token)


def make_clients(
    config: Config,
    tokens: dict[tuple[str | None, str | None], str],
    http: httpx.AsyncClient,
    previous: dict[ClientKey, ApiClient] | None = None,
) -> tuple[dict[tuple[str, str], ApiClient], dict[ClientKey, ApiClient]]:
    """One API client (and so one request budget) per token, shared by the apps that use it.

    On a reload, a token that is still the same keeps its budget (a 429 pause included) and its
    request counters; returns the clients by app and by token."""
    budget = config.api.rate_limit
    by_token: dict[ClientKey, ApiClient] = {}
    by_app = {}
    for app in config.apps:
        source = config.token_ref(app).source
        ident = (source, tokens[source])
        if ident not in by_token:
            old = (previous or {}).get(ident)
            limiter = RateLimiter(
                budget.requests, budget.period_seconds, reserve_fraction=budget.reserve_fraction
            )
            if old is not None and old.limiter.spacing == limiter.spacing:
                limiter = old.limiter
            by_token[ident] = ApiClient(
                http,
                base_url=config.api.base_url,
                token=tokens[source],
                limiter=limiter,
                stats=old.stats if old is not None else None,
            )
        by_app[app.key] = by_token[ident]
    return by_app, by_token


class Service:
    """The running exporter: what it polls with, and how a reload swaps that.

    Everything a reload changes is validated first (config file, tokens); only then is anything
    swapped, on the event loop's thread, between two polls."""

    def __init__(self, runtime: Runtime, config_path: str, redact: RedactingFilter) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.config_path = config_path
        self.redact = redact
        self.store = Store()
        self.reloads_ok: bool = True
        self.last_reload_success = time.time()
        self._http = self._make_http(self.config)
        self._clients_by_app, self._clients = make_clients(
            self.config, runtime.tokens or {}, self._http
        )
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.poller = Poller(
            scheduler=self.scheduler,
            client_for=self._client_for,
            store=self.store,
            interval_seconds=self.config.poll.interval_seconds,
            concurrency=self.config.poll.concurrency,
            max_backoff_seconds=self.config.poll.max_backoff_seconds,
            stale_after_seconds=self.config.poll.stale_after,
        )
        self._old_http: list[httpx.AsyncClient] = []

    @staticmethod
    def _make_http(config: Config) -> httpx.AsyncClient:
        return make_http_client(
            timeout_seconds=config.api.timeout_seconds, max_connections=config.poll.concurrency
        )

    def _client_for(self, app: tuple[str, str]) -> ApiClient:
        return self._clients_by_app[app]

    def start(self) -> None:
        self.scheduler.start()
        self.poller.apply(self.config)

    def reload(self) -> str:
        """Re-read the config file and the tokens; apply them if valid. Returns what happened;
        raises :class:`ConfigError` (and changes nothing) if they are not valid."""
        if self.runtime.cleanup is not None:
            raise ConfigError(["reload: the demo has no config file to re-read"])
        try:
            config = load_config(self.config_path)
            tokens = read_tokens(config)
        except ConfigError:
            self.reloads_ok = False
            raise
        self.redact.secrets.update(tokens.values())
        old = self.config
        http = self._http
        if (old.api.timeout_seconds, old.poll.concurrency) != (
            config.api.timeout_seconds,
            config.poll.concurrency,
        ):
            self._old_http.append(self._http)  # closed at exit: in-flight polls may still use it
            http = self._http = self._make_http(config)
        self._clients_by_app, self._clients = make_clients(config, tokens, http, self._clients)
        self.config = config
        self.runtime.tokens = tokens
        self.poller.configure(
            client_for=self._client_for,
            interval_seconds=config.poll.interval_seconds,
            concurrency=config.poll.concurrency,
            max_backoff_seconds=config.poll.max_backoff_seconds,
            stale_after_seconds=config.poll.stale_after,
        )
        self.poller.apply(config)
        self.reloads_ok = True
        self.last_reload_success = time.time()
        for warning in config.warnings():
            log.warning(warning)
        return (
            f"config reloaded: {len(config.apps)} app(s), {len(config.targets())} listed "
            f"meeting(s), poll every {config.poll.interval_seconds:g}s"
        )

    def reload_logged(self) -> tuple[bool, str]:
        """:meth:`reload`, with its outcome logged (for SIGHUP and ``POST /-/reload``)."""
        try:
            message = self.reload()
        except ConfigError as err:
            log.error("config reload failed, keeping the running config: %s", err)
            return False, f"reload failed, running config kept: {err}"
        except Exception:  # a bug: keep serving the old config, keep the traceback
            log.exception("config reload failed, keeping the running config")
            self.reloads_ok = False
            return False, "reload failed (internal error), running config kept"
        log.info(message)
        return True, message

    def reload_stats(self) -> tuple[bool, float]:
        return self.reloads_ok, self.last_reload_success

    async def close(self) -> None:
        self.scheduler.shutdown(wait=False)
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=3)
            for task in still:
                task.cancel()
        for http in (self._http, *self._old_http):
            await http.aclose()


async def run(
    runtime: Runtime,
    host: str,
    port: int,
    telemetry_path: str,
    web_config_file: str = "",
    config_path: str = "",
    redact: RedactingFilter | None = None,
) -> int:
    """Serve and poll until SIGTERM or SIGINT; reload on SIGHUP or ``POST /-/reload``."""
    loop = asyncio.get_running_loop()
    service = Service(runtime, config_path, redact or RedactingFilter())
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(
        MeetingCollector(
            service.store,
            interval_seconds=service.poller.help_interval,
            stale_after_seconds=lambda: service.config.poll.stale_after,
        )
    )
    registry.register(ExporterCollector(service.poller.stats, service.reload_stats))

    def reload_from_http() -> tuple[bool, str]:
        future = asyncio.run_coroutine_threadsafe(_call(service.reload_logged), loop)
        return future.result(timeout=30)

    def summary() -> str:
        config = service.config
        return (
            f"Polling {len(service.store.snapshot()[1])} meeting(s) in {len(config.apps)} app(s) "
            f"every {config.poll.interval_seconds:g} seconds."
        )

    app = create_app(
        registry=registry,
        telemetry_path=telemetry_path,
        ready=service.store.polled_all,
        summary=summary,
        reload=reload_from_http,
    )
    server, thread = serve(app, host, port, web_config_file=web_config_file)
    config = service.config
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "%s %s listening on %s:%d%s; %d app(s), %d listed meeting(s), poll every %gs, "
        "budget %d requests per %gs per token; config %s",
        PROG, __version__, shown, server.server_port, telemetry_path, len(config.apps),
        len(config.targets()), config.poll.interval_seconds, config.api.rate_limit.requests,
        config.api.rate_limit.period_seconds, runtime.source,
    )  # fmt: skip
    if runtime.cleanup is not None:
        print(f"Demo: metrics at http://127.0.0.1:{server.server_port}{telemetry_path}", flush=True)
    for warning in config.warnings():
        log.warning(warning)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, service.reload_logged)
    service.start()
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await service.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)
    return 0


async def _call(fn: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    return fn()
