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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from exporter import __version__
from exporter.client import ApiClient, RateLimiter, make_http_client
from exporter.collector import ExporterCollector, MeetingCollector
from exporter.config import Config, load_config, parse_config, read_token
from exporter.errors import ConfigError, ExporterError
from exporter.logs import FORMATS, LEVELS, RedactingFilter, setup_logging
from exporter.poller import Poller
from exporter.server import DEFAULT_PORT, create_app, parse_listen_address, serve
from exporter.store import Store

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
        help=f"address to serve on (default: :{DEFAULT_PORT})",
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        metavar="PATH",
        help="path of the metrics (default: /metrics)",
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
    token: str
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
    return Runtime(config, token, f"demo simulator at {sim.base_url}", cleanup=sim.stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    redact = RedactingFilter()
    setup_logging(args.log_level, args.log_format, redact=redact)
    try:
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
            runtime = Runtime(config, "", args.config_file)
    except ConfigError as err:
        if args.config_check:
            print(f"config invalid: {args.config_file}", file=sys.stderr)
            for problem in err.problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        return fail(f"{args.config_file}: {err}")
    config = runtime.config
    problems = []
    if not runtime.token:
        try:
            runtime.token = read_token(config.api)
        except ConfigError as err:
            problems = err.problems
    redact.secrets.add(runtime.token)
    if args.config_check:
        if problems:
            print(f"config invalid: {args.config_file}", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        for warning in config.warnings():
            print(f"warning: {warning}", file=sys.stderr)
        n = len(config.targets())
        print(
            f"config OK: {args.config_file}: {len(config.apps)} app(s), {n} meeting(s), "
            f"poll every {config.poll.interval_seconds:g}s, token from {config.api.token_source}"
        )
        return 0
    if problems:
        return fail("; ".join(problems))
    try:
        return asyncio.run(run(runtime, host, port, args.telemetry_path))
    except OSError as err:
        return fail(f"cannot listen on {args.listen_address}: {err.strerror or err}")
    except ExporterError as err:
        return fail(str(err))
    finally:
        if runtime.cleanup is not None:
            runtime.cleanup()


async def run(runtime: Runtime, host: str, port: int, telemetry_path: str) -> int:
    """Serve and poll until SIGTERM or SIGINT."""
    config = runtime.config
    store = Store()
    store.set_targets(config.targets())
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    n = len(config.targets())
    app = create_app(
        registry=registry,
        telemetry_path=telemetry_path,
        ready=store.polled_all,
        summary=lambda: (
            f"Polling {n} meeting(s) in {len(config.apps)} app(s) "
            f"every {config.poll.interval_seconds:g} seconds."
        ),
    )
    server, thread = serve(app, host, port)
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "%s %s listening on %s:%d%s; %d app(s), %d meeting(s), poll every %gs, "
        "budget %d requests per %gs; config %s",
        PROG,
        __version__,
        shown,
        server.server_port,
        telemetry_path,
        len(config.apps),
        n,
        config.poll.interval_seconds,
        config.api.rate_limit.requests,
        config.api.rate_limit.period_seconds,
        runtime.source,
    )
    if runtime.cleanup is not None:
        print(f"Demo: metrics at http://127.0.0.1:{server.server_port}{telemetry_path}", flush=True)
    for warning in config.warnings():
        log.warning(warning)

    http = make_http_client(
        timeout_seconds=config.api.timeout_seconds, max_connections=config.poll.concurrency
    )
    budget = config.api.rate_limit
    limiter = RateLimiter(
        budget.requests, budget.period_seconds, reserve_fraction=budget.reserve_fraction
    )
    client = ApiClient(http, base_url=config.api.base_url, token=runtime.token, limiter=limiter)
    scheduler = AsyncIOScheduler(timezone="UTC")
    poller = Poller(
        scheduler=scheduler,
        client_for=lambda key: client,
        store=store,
        interval_seconds=config.poll.interval_seconds,
        concurrency=config.poll.concurrency,
        max_backoff_seconds=config.poll.max_backoff_seconds,
    )
    registry.register(
        MeetingCollector(
            store,
            interval_seconds=poller.help_interval,
            stale_after_seconds=lambda: config.poll.stale_after,
        )
    )
    registry.register(ExporterCollector(poller.stats))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scheduler.start()
    poller.schedule(list(config.targets()))
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        scheduler.shutdown(wait=False)
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=3)
            for task in still:
                task.cancel()
        await http.aclose()
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)
    return 0
