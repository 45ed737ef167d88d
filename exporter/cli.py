"""Command line and composition root: parse flags, load config, wire the parts, run until stopped.

realtimekit-exporter --config.file config.yaml
realtimekit-exporter --demo
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.app import DEFAULT_PORT, CachedPage, create_app
from exporter.collector import ExporterCollector, MeetingCollector
from exporter.config import (
    Config,
    load_config,
    read_coordination_password,
    read_tokens,
    split_host_port,
)
from exporter.demo import Launch, demo_launch
from exporter.errors import ConfigError, ExporterError
from exporter.heap import return_large_blocks
from exporter.limiter import RateLimiter
from exporter.logs import FORMATS, LEVELS, RedactingFilter, setup_logging
from exporter.model import AppKey, MeetingKey
from exporter.poller import over_budget
from exporter.runtime import Service, Sharding
from exporter.shard import describe_split, resolve_shard
from exporter.status import Webhooks as WebhooksView
from exporter.status import config_page, status_page
from exporter.status_media import MediaView
from exporter.store import Labels
from exporter.web.flags import add_flags
from exporter.web.listen import bind, parse_listen_address, systemd_sockets
from exporter.web.security import load_web_config
from exporter.web.server import HttpServer, Limits, serve, serve_on, web_security
from exporter.web.wsgi import WsgiApp
from exporter.webhook_layer import Webhooks

log = logging.getLogger("exporter")

PROG = "realtimekit-exporter"
#: Bound of ``--total-shards``: far beyond any deployment (kube-state-metrics runs a handful).
MAX_SHARDS = 1000


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
    add_flags(p, f":{DEFAULT_PORT}", demo_note=f"127.0.0.1:{DEFAULT_PORT} in demo")
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        metavar="PATH",
        help="path of the metrics (default: /metrics)",
    )
    p.add_argument(
        "--shard",
        type=int,
        default=None,
        metavar="N",
        help="this process' shard, 0-based (default: from --pod when --total-shards > 1)",
    )
    p.add_argument(
        "--total-shards",
        dest="total_shards",
        type=_shard_count,
        default=1,
        metavar="M",
        help=f"split the work and each token's budget over M shards, 1 to {MAX_SHARDS} "
        "(default: 1, no sharding)",
    )
    p.add_argument(
        "--pod",
        default=os.environ.get("POD_NAME"),
        metavar="NAME",
        help="StatefulSet pod name whose trailing -<ordinal> is the shard (default: $POD_NAME)",
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    redact = RedactingFilter()
    setup_logging(args.log_level, args.log_format, redact=redact)
    if args.listen_address is None:  # the demo stays on loopback
        args.listen_address = [f"{'127.0.0.1' if args.demo else ''}:{DEFAULT_PORT}"]
    try:  # the flags: their problems name the flag, not the config file
        addresses = tuple(parse_listen_address(a) for a in args.listen_address)
        _check_telemetry_path(args.telemetry_path)
        sharding = _sharding(args)
    except ConfigError as err:
        return fail(str(err))
    try:
        launch = demo_launch() if args.demo else _file_launch(args.config_file)
    except ConfigError as err:
        if args.config_check:
            return _invalid(args.config_file, err.problems)
        return fail(f"{args.config_file}: {err}")
    try:
        problems = _read_secrets(launch, args, redact)
        if args.config_check:
            return _invalid(args.config_file, problems) if problems else _config_ok(args, launch)
        if problems:
            return fail("; ".join(problems))
        assert launch.tokens is not None and sharding is not None
        server = Server(addresses, args.telemetry_path, args.web_config_file, args.systemd_socket)
        return_large_blocks()  # the metrics bodies: freed memory goes back at once
        return asyncio.run(run(launch, server, redact, sharding))
    except OSError as err:
        where = ", ".join(args.listen_address)
        return fail(f"cannot listen on {where}: {err.strerror or err}")
    except ExporterError as err:
        return fail(str(err))
    finally:
        if launch.cleanup is not None:
            launch.cleanup()


def _sharding(args: argparse.Namespace) -> Sharding | None:
    """This process' shard (None: ``--config.check`` of every shard, none named)."""
    if args.config_check and args.shard is None and args.pod is None:
        return None
    return Sharding(resolve_shard(args.shard, args.total_shards, args.pod), args.total_shards)


def _shard_count(text: str) -> int:
    """``--total-shards``: a whole number from 1 to :data:`MAX_SHARDS` (argparse's usage error
    otherwise: a huge count would cost memory in proportion before anything runs)."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a whole number") from None
    if not 1 <= count <= MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_SHARDS}, got {text[:20]}")
    return count


def _check_telemetry_path(path: str) -> None:
    if not path.startswith("/") or path.startswith("/-/"):
        raise ConfigError([f"--web.telemetry-path: {path!r} must start with / and not with /-/"])


def _file_launch(path: str) -> Launch:
    return Launch(load_config(path), None, path, path)


def _read_secrets(launch: Launch, args: argparse.Namespace, redact: RedactingFilter) -> list[str]:
    """Read the tokens (unless the launch has them) and, for --config.check, the web config;
    returns the problems found."""
    problems: list[str] = []
    if launch.tokens is None:
        try:
            launch.tokens = read_tokens(launch.config)
        except ConfigError as err:
            problems = err.problems
    try:
        launch.redis_password = read_coordination_password(launch.config)
    except ConfigError as err:
        problems += err.problems
    redact.secrets.update((launch.tokens or {}).values())
    if launch.redis_password:
        redact.secrets.add(launch.redis_password)
    if args.config_check and args.web_config_file:
        try:
            load_web_config(args.web_config_file)
        except ConfigError as err:
            problems += [f"--web.config.file {args.web_config_file}: {p}" for p in err.problems]
    return problems


def _invalid(path: str, problems: list[str]) -> int:
    print(f"config invalid: {path}", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1


def _config_ok(args: argparse.Namespace, launch: Launch) -> int:
    config = launch.config
    for warning in config.warnings() + budget_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    sources = sorted({str(config.token_ref(app)) for app in config.apps})
    discovering = sum(app.discover.enabled for app in config.apps)
    print(
        f"config OK: {args.config_file}: {len(config.apps)} app(s) "
        f"({discovering} discovering), {len(config.targets())} listed meeting(s), "
        f"poll every {config.poll.interval_seconds:g}s, token from {', '.join(sources)}"
    )
    if args.total_shards > 1:
        print(describe_split(config, args.total_shards))
    return 0


def budget_warnings(config: Config) -> list[str]:
    """What the poller says at start when the listed meetings of plain apps need more than
    their token's budget (one line per token; the whole config, as if unsharded: each shard's
    part of a budget follows its part of the demand)."""
    budget = config.api.rate_limit
    spacing = RateLimiter(
        budget.requests, budget.period_seconds, reserve_fraction=budget.reserve_fraction
    ).spacing
    polled = Counter(
        config.token_ref(app).source
        for app in config.apps
        if not app.discover.enabled
        for _ in app.meetings
    )
    every = config.poll.interval_seconds
    found = (over_budget(count, every, spacing) for count in polled.values())
    return [warning for warning in found if warning is not None]


@dataclass(frozen=True)
class Server:
    """Where and how to serve (from the flags)."""

    addresses: tuple[tuple[str, int], ...]  # (host, port) of each --web.listen-address
    telemetry_path: str
    web_config_file: str = ""
    systemd_socket: bool = False  # serve on systemd's sockets instead of the addresses


def collectors(service: Service) -> list[Collector]:
    """What /metrics exports, in order: the process, the meetings, the exporter's health."""
    # prometheus_client's own collectors insist on registering somewhere: a throwaway registry
    # (the server is handed the list itself).
    scratch = CollectorRegistry(auto_describe=False)
    return [
        ProcessCollector(registry=scratch),
        PlatformCollector(registry=scratch),
        GCCollector(registry=scratch),
        MeetingCollector(
            service.store,
            stale_after_seconds=lambda: service.config.poll.stale_after,
            # This shard's apps; a standby exports no meeting, so no aggregate either.
            options=lambda: {a.key: a.metrics for a in service.runtime.apps if service.leader},
        ),
        ExporterCollector(
            service.health.snapshot,
            service.webhooks.stats.snapshot if service.webhooks is not None else None,
            service.coordination_state if service.coordinator is not None else None,
        ),
        service.watch.collector(lambda apps: _exported(service, apps)),
    ]


def _webhooks_view(service: Service) -> WebhooksView | None:
    """What the status page shows of the webhook receiver (None: no receiver)."""
    hooks, listen = service.webhooks, service.config.webhooks.listen_address
    if hooks is None or listen is None:
        return None
    apps = [app.key for app in service.runtime.apps if app.webhooks.enabled]
    return WebhooksView(listen, apps, service.slowed, hooks.stats.snapshot().last_event)


def _exported(service: Service, apps: Collection[AppKey]) -> dict[MeetingKey, Labels]:
    """The meetings of ``apps`` that have per-meeting series, with their static labels."""
    wanted = {a.key for a in service.runtime.apps if a.key in apps and a.metrics.per_meeting}
    states = service.store.snapshot()[1] if wanted else {}
    return {key: state.labels for key, state in states.items() if key.app in wanted}


async def run(
    launch: Launch,
    where: Server,
    redact: RedactingFilter | None = None,
    sharding: Sharding | None = None,
) -> int:
    """Serve and poll until SIGTERM or SIGINT; reload on SIGHUP or ``POST /-/reload``."""
    loop = asyncio.get_running_loop()
    assert launch.tokens is not None
    service = Service(
        launch.config,
        launch.tokens,
        config_path=launch.config_path,
        redact=redact or RedactingFilter(),
        sharding=sharding,
        redis_password=launch.redis_password,
    )

    def reload_from_http() -> tuple[bool, str]:
        return asyncio.run_coroutine_threadsafe(service.reload(), loop).result(timeout=60)

    def status() -> str:
        now = time.time()
        return status_page(
            states=service.store.snapshot()[1],
            health=service.health.snapshot(),
            config=service.config,
            now=now,
            stale_after=service.config.poll.stale_after,
            version=__version__,
            telemetry_path=where.telemetry_path,
            note=(
                _share(service) + ((service.coordinator and service.coordinator.conflict) or "")
            ).strip(),
            webhooks=_webhooks_view(service),
            media=MediaView.of(service.watch.media, service.watch.stats.snapshot(), now),
        )

    app = create_app(
        collectors=collectors(service),
        telemetry_path=where.telemetry_path,
        ready=service.store.polled_all,
        status=CachedPage(status),  # made at most once a second, however many ask
        config_text=lambda: config_page(service.config),
        reload=reload_from_http,
    )
    server, thread = _serve(app, where)
    servers = [(server, thread)]
    _started(launch, where, server, _share(service))
    if service.webhooks is not None:
        servers.append(_webhook_listener(service.webhooks, where))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, service.request_reload)
    service.start()
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await service.close()
        for each, runs in servers:
            each.shutdown()
            each.server_close()
            runs.join(timeout=2)
    return 0


def _serve(app: WsgiApp, where: Server) -> tuple[HttpServer, threading.Thread]:
    """Serve on every listen address (or systemd's sockets), TLS and auth from the web config."""
    web = web_security(where.web_config_file)
    limits = Limits()
    if where.systemd_socket:
        listeners = systemd_sockets()
    else:
        listeners = []
        try:
            for host, port in where.addresses:
                listeners.append(bind(host, port, limits.backlog))
        except OSError:
            for each in listeners:
                each.close()
            raise
    return serve_on(app, listeners, web=web, limits=limits)


def _webhook_listener(webhooks: Webhooks, where: Server) -> tuple[HttpServer, threading.Thread]:
    """The webhook receiver on its own address: the web config's TLS and headers, no basic
    auth (RealtimeKit cannot send it; the signature authenticates each delivery)."""
    address = webhooks.settings.listen_address
    assert address is not None
    host, port = split_host_port(address)
    try:
        listener = serve(
            webhooks.receiver, host, port, web_config_file=where.web_config_file, basic_auth=False,
            limits=Limits(max_body_bytes=webhooks.settings.max_body_bytes),
        )  # fmt: skip
    except OSError as err:
        problem = f"webhooks.listen_address: cannot listen on {address}: {err.strerror or err}"
        raise ConfigError([problem]) from None
    log.info(
        "webhook receiver serving %s:%d (POST /webhooks/{account_id}/{app_id}) for %d app(s)",
        host, listener[0].server_port, len(webhooks.apps()),
    )  # fmt: skip
    return listener


def _share(service: Service) -> str:
    """What this shard took, for the startup line and the landing page ("" unsharded)."""
    sharding, runtime = service.sharding, service.runtime
    if sharding.total == 1:
        return ""
    budgets = ", ".join(
        f"{c.limiter.per_second * c.limiter.period:.0f} requests per {c.limiter.period:g}s"
        for c in runtime.by_token.values()
    )
    return (
        f" Shard {sharding.shard} of {sharding.total}: {len(runtime.targets())} listed "
        f"meeting(s), {len(runtime.apps)} app(s); token budget share: {budgets or 'none'}."
    )


def _started(launch: Launch, where: Server, server: HttpServer, share: str) -> None:
    config = launch.config
    shown = ", ".join(
        f"{f'[{host}]' if ':' in host else host}:{port}{where.telemetry_path}"
        for host, port in (sock.getsockname()[:2] for sock in server.listeners)
    )
    port = server.server_port
    log.info(
        "%s %s listening on %s; %d app(s), %d listed meeting(s), poll every %gs, "
        "budget %d requests per %gs per token; config %s%s",
        PROG, __version__, shown, len(config.apps),
        len(config.targets()), config.poll.interval_seconds, config.api.rate_limit.requests,
        config.api.rate_limit.period_seconds, launch.source, share,
    )  # fmt: skip
    if launch.banner:
        print(launch.banner, flush=True)
        print(f"Demo: metrics at http://127.0.0.1:{port}{where.telemetry_path}", flush=True)
    for warning in config.warnings():
        log.warning(warning)
