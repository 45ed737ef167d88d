"""The built-in demo (``--demo``): the simulator on loopback, delivering signed webhooks to the
exporter's receiver, and a config that watches its meetings with every pull on, so that a fresh
clone shows every family within a minute. Also :class:`Launch`, what a run needs beyond the flags
(the demo supplies its own; a config file gives the rest)."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

from exporter.config import Config, parse_config
from exporter.runtime import Tokens


@dataclass
class Launch:
    """What :func:`run` needs beyond the flags; the demo supplies its own."""

    config: Config
    tokens: Tokens | None  # by TokenRef.source; None: read them from where the config says
    source: str
    config_path: str | None  # None: no file to reload (the demo)
    cleanup: Callable[[], None] | None = None  # run at exit (the demo's simulator)
    banner: str = ""  # printed once serving (the demo's URLs)
    redis_password: str | None = None  # coordination's, from its file or variable


def demo_launch() -> Launch:
    """Start the simulator on loopback, delivering signed webhooks to the demo's receiver, and
    make a config that watches its meetings with both (polling reconciles)."""
    from exporter.simulator import Simulator

    token = "demo-" + secrets.token_hex(16)
    hooks = _free_loopback_port()
    sim = Simulator(
        token=token,
        meetings=6,
        speed=10.0,
        seed=7,
        webhook_url=f"http://127.0.0.1:{hooks}/webhooks/{{account_id}}/{{app_id}}",
        recording_chance=0.6,
        recording_error_rate=0.15,
        recording_stuck_rate=0.1,
        livestream_chance=0.4,
        livestream_error_rate=0.25,
        peer_bad_rate=0.25,
        peer_partial_rate=0.2,
        peer_late_rate=0.1,
    )
    sim.start("127.0.0.1", 0)
    app = {
        "account_id": "023e105f4ecef8ad9ca31a8372d0c353",
        "app_id": "6f0a8a2c3b8e4f62a1d2c3b4e5f60718",
        "meetings": [
            {"id": m, "labels": {"team": ("sales", "support", "eng")[i % 3]}}
            for i, m in enumerate(sim.meeting_ids)
        ],
        "webhooks": {"enabled": True},
        "recordings": {"enabled": True, "interval_seconds": 10},
        "livestreams": {"enabled": True, "interval_seconds": 10},
        "usage": {"enabled": True, "interval_seconds": 60},
        "quality": {"enabled": True, "delay_seconds": 2},
    }
    config = parse_config(
        {
            "api": {"base_url": sim.base_url, "timeout_seconds": 4},
            "poll": {"interval_seconds": 5},
            "webhooks": {
                "listen_address": f"127.0.0.1:{hooks}",
                "public_key_url": sim.webhook_key_url,
                "reconcile_interval_seconds": 30,
                "public_url": f"http://127.0.0.1:{hooks}",
                "registration_check_seconds": 60,
            },
            "apps": [app],
        }
    )
    tokens = {config.token_ref(config.apps[0]).source: token}
    # The demo token is a throwaway for a loopback simulator: printed so that curl or a second
    # exporter can use the simulator too.
    banner = (
        f"Demo: simulated RealtimeKit API at {sim.base_url} (token {token}); it delivers "
        f"signed webhooks to http://127.0.0.1:{hooks}/webhooks/…; try: curl -H "
        f"'Authorization: Bearer {token}' {sim.base_url}/accounts/{app['account_id']}"
        f"/realtime/kit/{app['app_id']}/sessions"
    )
    return Launch(
        config, tokens, f"demo simulator at {sim.base_url}", None, cleanup=sim.stop, banner=banner
    )


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
