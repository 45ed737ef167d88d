"""The container's HEALTHCHECK: does the exporter in this container answer on ``/-/healthy``?

    $ python -m exporter.healthcheck
    healthy: 200 from http://127.0.0.1:9877/-/healthy
    $ python -m exporter.healthcheck --web.listen-address 127.0.0.1:9999
    unhealthy: http://127.0.0.1:9999/-/healthy: connection refused

Without flags it reads the exporter's own ``--web.listen-address`` and ``--web.config.file`` from
PID 1's command line (``/proc/1/cmdline``), so it follows whatever the container was started with.
A wildcard address (``:9877``, ``0.0.0.0``, ``::``) is probed on loopback; a web config with
``tls_server_config`` means https, without certificate verification (the probe only asks its own
loopback port whether anything answers). 200 is healthy; 401 (basic auth on) and a TLS server
asking for a client certificate are alive too.

Exit status 0 healthy, 1 not; one short line of output either way, never a traceback. Standard
library plus PyYAML (a dependency of the exporter anyway): it starts fast, every 30 s.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import yaml

DEFAULT_LISTEN_ADDRESS = ":9877"  # the exporter's default (exporter.app.DEFAULT_PORT)
CMDLINE = "/proc/1/cmdline"
HEALTH_PATH = "/-/healthy"
TIMEOUT_SECONDS = 2.0
_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
# TLS alerts with which a server that requires client certificates refuses the probe's handshake.
_CLIENT_CERT_ALERTS = frozenset(
    {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_BAD_CERTIFICATE"}
)


class Unhealthy(Exception):
    """Why the exporter is not healthy, as one short line."""


def _flag_parser() -> argparse.ArgumentParser:
    """The two exporter flags the probe needs, spelt as the exporter spells them."""
    p = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    p.add_argument("--web.listen-address", dest="listen_address", action="append", default=None)
    p.add_argument("--web.config.file", dest="web_config_file", default=None)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m exporter.healthcheck",
        parents=[_flag_parser()],
        exit_on_error=False,
        description="Probe the exporter's /-/healthy; exit 0 if it answers, 1 if not.",
        epilog="Without --web.* flags they are read from the exporter's command line "
        "(--cmdline-file).",
    )
    p.add_argument(
        "--cmdline-file",
        default=CMDLINE,
        metavar="PATH",
        help=f"NUL-separated command line of the exporter (default: {CMDLINE})",
    )
    return p


def exporter_flags(argv: Sequence[str]) -> tuple[str, str]:
    """``(listen address, web config file)`` from an exporter command line; defaults for what is
    not given. ``--`` (e.g. ``docker-init -- realtimekit-exporter …``) and unknown flags are
    skipped; of several listen addresses the first is probed (the exporter serves the same on
    each), of a repeated web config the last wins, as in the exporter."""
    try:
        known, _ = _flag_parser().parse_known_args([a for a in argv if a != "--"])
    except argparse.ArgumentError as err:
        raise Unhealthy(f"cannot read the exporter's flags: {err}") from None
    return _flag_values(known)


def _flag_values(flags: argparse.Namespace) -> tuple[str, str]:
    listen_address = flags.listen_address
    return (
        DEFAULT_LISTEN_ADDRESS if not listen_address else listen_address[0],
        flags.web_config_file or "",
    )


def read_cmdline(path: str) -> list[str]:
    """The arguments after the program name in a ``/proc/PID/cmdline`` file; [] if unreadable."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[1:-1]  # each argument ends with a NUL


def uses_tls(web_config_file: str) -> bool:
    """Whether the exporter serves https: a ``tls_server_config`` with a ``cert_file``."""
    if not web_config_file:
        return False
    try:
        data = yaml.safe_load(Path(web_config_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise Unhealthy(f"cannot read --web.config.file {web_config_file}: {err}") from None
    tls = data.get("tls_server_config") if isinstance(data, dict) else None
    return isinstance(tls, dict) and tls.get("cert_file") is not None


def probe_url(listen_address: str, tls: bool) -> str:
    """The URL to probe for a listen address.

    >>> probe_url(":9877", False), probe_url("[::]:9443", True)
    ('http://127.0.0.1:9877/-/healthy', 'https://[::1]:9443/-/healthy')
    """
    host, sep, port = listen_address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise Unhealthy(f"--web.listen-address {listen_address!r} is not HOST:PORT")
    host = host.strip("[]")
    host = _LOOPBACK.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{int(port)}{HEALTH_PATH}"


def _opener() -> urllib.request.OpenerDirector:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # No proxy: HTTP(S)_PROXY in the container's environment must not divert a loopback probe.
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )


def probe(url: str, timeout: float = TIMEOUT_SECONDS) -> str:
    """One GET of ``url``: the line to print if the exporter is alive, else :class:`Unhealthy`."""
    try:
        with _opener().open(url, timeout=timeout) as response:
            return f"healthy: {response.status} from {url}"
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 401:
            return f"alive: 401 from {url} (basic auth is on)"
        raise Unhealthy(f"{url}: HTTP {err.code}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        if isinstance(reason, ssl.SSLError) and reason.reason in _CLIENT_CERT_ALERTS:
            return f"alive: {url} requires a client certificate"
        raise Unhealthy(f"{url}: {_describe(reason, timeout)}") from None


def _describe(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g}s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error: {reason.reason or reason}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def check(argv: Sequence[str]) -> str:
    """Run the check for the healthcheck's own command line; the line to print, or raise."""
    try:
        args, unknown = build_parser().parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise Unhealthy(str(err)) from None
    if unknown:
        raise Unhealthy(f"unknown arguments: {' '.join(unknown)}")
    if args.listen_address is None and args.web_config_file is None:
        listen_address, web_config_file = exporter_flags(read_cmdline(args.cmdline_file))
    else:
        listen_address, web_config_file = _flag_values(args)
    return probe(probe_url(listen_address, uses_tls(web_config_file)))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        print(check(sys.argv[1:] if argv is None else argv))
    except Unhealthy as err:
        print(f"unhealthy: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # a probe must never print a traceback into `docker inspect`
        print(f"unhealthy: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
