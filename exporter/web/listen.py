"""Where to listen: ``--web.listen-address`` values.

>>> parse_listen_address("127.0.0.1:9877"), parse_listen_address(":9877")
(('127.0.0.1', 9877), ('0.0.0.0', 9877))
"""

from __future__ import annotations

from exporter.errors import ConfigError


def split_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[v6addr]:PORT`` to ``(host, port)``;
    ``ValueError`` otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_listen_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[v6addr]:PORT`` to ``(host, port)``."""
    try:
        return split_host_port(value)
    except ValueError:
        raise ConfigError([f"--web.listen-address: {value!r} is not HOST:PORT"]) from None
