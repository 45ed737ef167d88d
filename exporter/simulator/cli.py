"""``python -m exporter.simulator`` and ``realtimekit-simulator``: a standalone simulator with
every convention, fault and webhook option as a flag."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from exporter.simulator.core import Simulator
from exporter.simulator.delivery import WELL_KNOWN_PATH
from exporter.simulator.options import (
    DAY_FORMATS,
    DEFAULT_ACCOUNT_ID,
    DEFAULT_APP_ID,
    DEMO_TOKEN,
    FAULT_KINDS,
    LIVESTREAM_SHAPES,
    NO_RECORDING_MESSAGES,
    PAGING_FIELDS,
    PAGING_MODES,
    UNKNOWN_MEETING_MODES,
    WEBHOOK_RETRY_DELAYS,
    FaultConfig,
)

__all__ = ["main"]


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"probability must be within 0..1: {text}")
    return value


def _rate_limit(text: str) -> tuple[int, float]:
    n, sep, w = text.partition("/")
    try:
        limit, window = int(n), float(w)
    except ValueError:
        limit, window = -1, 0.0
    if not sep or limit < 0 or window <= 0:
        raise argparse.ArgumentTypeError(f"expected N/W such as 1200/300, got {text!r}")
    return limit, window


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _fields(text: str) -> tuple[str, ...]:
    names = tuple(f.strip() for f in text.split(",") if f.strip())
    if bad := [f for f in names if f not in PAGING_FIELDS]:
        raise argparse.ArgumentTypeError(f"unknown paging fields {bad}; known: {PAGING_FIELDS}")
    return names


def _private_key_file(path: str) -> rsa.RSAPrivateKey:
    try:
        pem = Path(path).read_bytes()
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {err.strerror}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise argparse.ArgumentTypeError(
            f"{path}: not an unencrypted PEM private key ({err})"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise argparse.ArgumentTypeError(f"{path}: a {type(key).__name__}, RSA expected")
    return key


def _epilog() -> str:
    kinds = ", ".join(sorted(FAULT_KINDS))
    return "\n".join(
        [
            "controls (no token needed):",
            '  POST /_sim/meetings/ID {"participants": N} | {"end": true} | {"clear": true}',
            '  POST /_sim/meetings/ID {"fault": KIND}      force a fault on its active-session',
            '  POST /_sim/apps/ACCOUNT/APP {"fault": KIND} on its /sessions (but not_found)',
            '  POST /_sim/apps/ACCOUNT/APP {"fault": KIND, "endpoint": E} on another endpoint',
            '  POST /_sim/recordings/MEETING {"status": S, "plan": P}  invoke a recording',
            '  POST /_sim/recording/ID {"status": S} | {"step": true}',
            '  POST /_sim/livestreams/MEETING {"status": S, "plan": P}; /_sim/livestream/ID',
            '  POST /_sim/register/ACCOUNT/APP {"url": U, "events": [...], "enabled": B}',
            '  POST /_sim/registrations/ID {"enabled": B} | {"events": [...]} | {"delete": true}',
            '  POST /_sim/usage/ACCOUNT/APP {"day": D, "sessions": N, "session_minutes": M, ...}',
            '  POST /_sim/peers/MEETING {"leave": PEER_ID | true}: its peers now and gone',
            '  POST /_sim/peer/PEER_ID {"quality": Q, "kinds": [...], "delay": S, "broken": B}',
            '  {"fault": null} clears; GET /_sim/stats; GET /-/healthy',
            textwrap.fill(f"fault kinds: {kinds}", 96, subsequent_indent="  "),
        ]
    )


_GENERAL_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--listen", {"type": _listen, "default": "127.0.0.1:8080",
        "help": "HOST:PORT to serve on; port 0 picks a free port (default: %(default)s)"}),
    ("--token", {"default": None,
        "help": "API token clients must send as 'Authorization: Bearer TOKEN' (default: "
        f"$CLOUDFLARE_API_TOKEN if set, else {DEMO_TOKEN!r})"}),
    ("--account-id", {"default": DEFAULT_ACCOUNT_ID, "help": "account id (default: %(default)s)"}),
    ("--app-id", {"default": DEFAULT_APP_ID, "help": "app id (default: %(default)s)"}),
    ("--meetings", {"type": int, "default": 5,
        "help": "number of meetings of the app (default: %(default)s)"}),
    ("--speed", {"type": float, "default": 1.0,
        "help": "simulated seconds per real second: 10 plays meetings' lives ten times faster "
        "(default: %(default)s)"}),
    ("--seed", {"type": int, "default": None,
        "help": "seed for reproducible ids and meeting lives (default: none, random)"}),
    ("--auto", {"action": argparse.BooleanOptionalAction, "default": True,
        "help": "meetings start, change and end on their own; with --no-auto only the control "
        "endpoints change them (default: %(default)s)"}),
    ("--all-live", {"action": "store_true",
        "help": "start every meeting with a LIVE session of one participant (default: off)"}),
    ("--rate-limit", {"type": _rate_limit, "default": None, "metavar": "N/W",
        "help": "at most N requests per W seconds per token, e.g. 1200/300 (default: none)"}),
]  # fmt: skip
_CONVENTION_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--page-base", {"type": int, "choices": (0, 1), "default": 1,
        "help": "number of the first /sessions page; with 1, page_no 0 is read as 1; with 0, "
        "page_no 1 is the second page (default: %(default)s)"}),
    ("--per-page-cap", {"type": int, "default": 100, "metavar": "N",
        "help": "serve at most N sessions per page whatever per_page asks (default: %(default)s)"}),
    ("--paging", {"choices": PAGING_MODES, "default": "full",
        "help": "the paging object: full; partial (without the --paging-drop fields); absent "
        "(default: %(default)s)"}),
    ("--paging-drop", {"type": _fields, "default": ("total_count",), "metavar": "FIELDS",
        "help": "comma-separated paging fields that --paging partial leaves out (default: "
        "total_count)"}),
    ("--unknown-meeting", {"choices": UNKNOWN_MEETING_MODES, "default": "no_session",
        "help": "active-session answer for a meeting id the app lacks: no_session = 404 'No "
        "active session found for meeting_id ID', not_found = 404 'Meeting not found' (default: "
        "%(default)s)"}),
    ("--churn-per-page", {"type": int, "default": 0, "metavar": "K",
        "help": "after each /sessions page, K LIVE sessions end and K new meetings go LIVE "
        "(default: %(default)s)"}),
]  # fmt: skip
_MEDIA_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--livestream-shape", {"choices": LIVESTREAM_SHAPES, "default": "list",
        "help": "GET /livestreams: list = data a list with paging beside it; object = the "
        "published type, data one livestream with paging inside (default: %(default)s)"}),
    ("--no-recording", {"choices": NO_RECORDING_MESSAGES, "default": "no_active",
        "help": "active-recording answer when there is none: no_active = 404 'No active "
        "recording found for meeting_id ID', not_found = 404 'Recording not found' (default: "
        "%(default)s)"}),
    ("--usage-day-format", {"choices": DAY_FORMATS, "default": "date",
        "help": "analytics/daywise day values: date = 2027-01-15, datetime = "
        "2027-01-15T00:00:00.000Z (default: %(default)s)"}),
    ("--recording-chance", {"type": _probability, "default": 0.0, "metavar": "P",
        "help": "auto mode: probability that a session that starts is recorded (default: "
        "%(default)s)"}),
    ("--recording-error-rate", {"type": _probability, "default": 0.0, "metavar": "P",
        "help": "probability that such a recording ends ERRORED (default: %(default)s)"}),
    ("--recording-stuck-rate", {"type": _probability, "default": 0.0, "metavar": "P",
        "help": "probability that its upload never finishes (default: %(default)s)"}),
    ("--livestream-chance", {"type": _probability, "default": 0.0, "metavar": "P",
        "help": "auto mode: probability that a session that starts is livestreamed (default: "
        "%(default)s)"}),
    ("--livestream-error-rate", {"type": _probability, "default": 0.0, "metavar": "P",
        "help": "probability that such a livestream goes ERRORED (default: %(default)s)"}),
]  # fmt: skip
_PEER_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--peer-bad-rate", {"type": _probability, "default": 0.0, "metavar": "P",
        "help": "probability that a peer's report is a bad call (default: %(default)s)"}),
    ("--peer-partial-rate", {"type": _probability, "default": 0.0, "metavar": "P",
        "help": "probability that it lacks some stream kinds (default: %(default)s)"}),
    ("--peer-late-rate", {"type": _probability, "default": 0.0, "metavar": "P",
        "help": "probability that it is missing for --peer-late-seconds after the peer left "
        "(default: %(default)s)"}),
    ("--peer-late-seconds", {"type": float, "default": 100.0, "metavar": "SECONDS",
        "help": "how long a late report is missing (default: %(default)s)"}),
    ("--peer-missing-rate", {"type": _probability, "default": 0.0, "metavar": "P",
        "help": "probability that it never exists (default: %(default)s)"}),
]  # fmt: skip
_WEBHOOK_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--webhook-url", {"default": None, "metavar": "URL",
        "help": "POST signed meeting events here; {account_id} and {app_id} are replaced, e.g. "
        "http://127.0.0.1:9101/webhooks/{account_id}/{app_id} (default: none, no events)"}),
    ("--webhook-key-file", {"type": _private_key_file, "default": None, "metavar": "PEM",
        "help": "RSA private key to sign with; its public key is served at "
        f"{WELL_KNOWN_PATH} (default: a new 2048-bit key when --webhook-url is set)"}),
    ("--register-webhooks", {"action": argparse.BooleanOptionalAction, "default": True,
        "help": "give every app a registration of --webhook-url with every event (GET "
        "/webhooks); events go out only while a registration allows them (default: "
        "%(default)s)"}),
    ("--webhook-retries", {"type": int, "default": 3, "metavar": "N",
        "help": "retries of a delivery answered 5xx or failed on the network, after "
        f"{', '.join(f'{d:g}' for d in WEBHOOK_RETRY_DELAYS)} s (the last repeats) "
        "(default: %(default)s)"}),
]  # fmt: skip
_FAULT_FLAGS = (
    ("500", "HTTP 500"),
    ("503", "a 502 or 503 HTML page"),
    ("timeout", "an answer that comes after --slow-seconds"),
    ("reset", "a connection reset without an answer"),
    ("non-json", "a 200 HTML body"),
    ("wrong-types", "a 200 body with fields of the wrong JSON types"),
)
_PACE_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--latency", {"default": 0.0, "help": "added to every API answer (default: %(default)s)"}),
    ("--slow-seconds", {"default": 30.0,
        "help": "wait of a timeout fault (default: %(default)s)"}),
    ("--trickle-seconds", {"default": 1.0,
        "help": "pace of trickle (per byte) and endless (per chunk) answers (default: "
        "%(default)s)"}),
]  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m exporter.simulator",
        description="A simulated Cloudflare RealtimeKit API on a real HTTP server, for demos, "
        "tests and benchmarks.\nOn start it prints its base_url, where the token came from and "
        "the meeting ids.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, options in _GENERAL_FLAGS:
        ap.add_argument(flag, **options)
    conventions = ap.add_argument_group("API conventions the spec leaves open")
    for flag, options in _CONVENTION_FLAGS:
        conventions.add_argument(flag, **options)
    media = ap.add_argument_group("recordings and livestreams")
    for flag, options in _MEDIA_FLAGS:
        media.add_argument(flag, **options)
    peers = ap.add_argument_group("peer reports")
    for flag, options in _PEER_FLAGS:
        peers.add_argument(flag, **options)
    hooks = ap.add_argument_group("webhooks")
    for flag, options in _WEBHOOK_FLAGS:
        hooks.add_argument(flag, **options)
    faults = ap.add_argument_group("random faults of API requests")
    for name, what in _FAULT_FLAGS:
        faults.add_argument(
            f"--fault-{name}",
            type=_probability,
            default=0.0,
            metavar="P",
            help=f"probability (0..1) of {what} (default: %(default)s)",
        )
    for flag, options in _PACE_FLAGS:
        faults.add_argument(flag, type=float, metavar="SECONDS", **options)
    return ap


def _token(flag: str | None) -> tuple[str, str]:
    """(token, where it came from): --token, else $CLOUDFLARE_API_TOKEN, else the demo token."""
    if flag:
        return flag, "--token"
    if env := os.environ.get("CLOUDFLARE_API_TOKEN"):
        return env, "$CLOUDFLARE_API_TOKEN"
    return DEMO_TOKEN, "built-in"


def _simulator(args: argparse.Namespace, token: str) -> Simulator:
    faults = FaultConfig(
        error_500=args.fault_500,
        error_503=args.fault_503,
        timeout=args.fault_timeout,
        reset=args.fault_reset,
        non_json=args.fault_non_json,
        wrong_types=args.fault_wrong_types,
        latency_seconds=args.latency,
        slow_seconds=args.slow_seconds,
        trickle_seconds=args.trickle_seconds,
    )
    return Simulator(
        token=token,
        account_id=args.account_id,
        app_id=args.app_id,
        meetings=args.meetings,
        auto=args.auto,
        live=args.all_live,
        speed=args.speed,
        seed=args.seed,
        faults=faults,
        rate_limit=args.rate_limit,
        page_base=args.page_base,
        per_page_cap=args.per_page_cap,
        paging=args.paging,
        paging_drop=args.paging_drop,
        unknown_meeting=args.unknown_meeting,
        churn_per_page=args.churn_per_page,
        livestream_shape=args.livestream_shape,
        usage_day_format=args.usage_day_format,
        register_webhooks=args.register_webhooks,
        no_recording=args.no_recording,
        recording_chance=args.recording_chance,
        recording_error_rate=args.recording_error_rate,
        recording_stuck_rate=args.recording_stuck_rate,
        livestream_chance=args.livestream_chance,
        livestream_error_rate=args.livestream_error_rate,
        peer_bad_rate=args.peer_bad_rate,
        peer_partial_rate=args.peer_partial_rate,
        peer_late_rate=args.peer_late_rate,
        peer_late_seconds=args.peer_late_seconds,
        peer_missing_rate=args.peer_missing_rate,
        webhook_url=args.webhook_url,
        webhook_key=args.webhook_key_file,
        webhook_retries=args.webhook_retries,
    )


def main(argv: list[str] | None = None) -> int:
    """Run a standalone simulator until SIGINT/SIGTERM."""
    args = _parser().parse_args(argv)
    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    token, source = _token(args.token)
    try:
        sim = _simulator(args, token)
        sim.start(*args.listen)
    except (ValueError, OSError) as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    shown = f" token={token}" if source == "built-in" else ""  # only the public demo token
    if sim.webhook_key is not None:
        shown += f" webhook_key_url={sim.webhook_key_url}"
    print(
        f"RealtimeKit simulator: base_url={sim.base_url} token_source={source}{shown} "
        f"account_id={sim.account_id} app_id={sim.app_id} meetings={','.join(sim.meeting_ids)}",
        flush=True,
    )
    try:
        while not done.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0
