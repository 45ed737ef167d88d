"""Where to listen: ``--web.listen-address`` values, and sockets handed over by systemd.

    >>> parse_listen_address("127.0.0.1:9877"), parse_listen_address(":9877")
    (('127.0.0.1', 9877), ('0.0.0.0', 9877))
    >>> bind("127.0.0.1", 0, backlog=1024)          # listening, ready for HttpServer
    >>> systemd_sockets()                             # --web.systemd-socket: fds 3, 4, ...

Socket activation follows sd_listen_fds(3): the sockets are file descriptors 3 to
3 + ``LISTEN_FDS`` - 1, meant for this process only if ``LISTEN_PID`` is its pid; both
variables are then removed from the environment, so that no child takes them for its own.
"""

from __future__ import annotations

import os
import socket

from exporter.errors import ConfigError

#: The first file descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


def split_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[v6addr]:PORT`` to ``(host, port)``;
    ``ValueError`` otherwise."""
    host, sep, port = value.rpartition(":")
    number = port_number(port)
    if not sep or number is None:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", number


def port_number(text: str) -> int | None:
    """``text`` as a TCP port number (0 to 65535), or None (ASCII digits only)."""
    if len(text) <= 5 and text.isascii() and text.isdigit() and int(text) <= 65535:
        return int(text)
    return None


def parse_listen_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[v6addr]:PORT`` to ``(host, port)``."""
    try:
        return split_host_port(value)
    except ValueError:
        raise ConfigError([f"--web.listen-address: {value!r} is not HOST:PORT"]) from None


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A socket listening on ``host:port`` (``OSError`` if it cannot), as socketserver binds."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def systemd_sockets() -> list[socket.socket]:
    """The listening sockets systemd passed to this process; :class:`ConfigError` if none."""
    fds = os.environ.get("LISTEN_FDS", "")
    pid = os.environ.get("LISTEN_PID", "")
    if not fds or not pid:
        raise ConfigError(
            ["--web.systemd-socket: no sockets from systemd (LISTEN_FDS and LISTEN_PID unset)"]
        )
    if not pid.isdigit() or int(pid) != os.getpid():
        raise ConfigError(
            [f"--web.systemd-socket: LISTEN_PID {pid[:20]!r} is not this process ({os.getpid()})"]
        )
    if not fds.isdigit() or not 0 < int(fds) <= 64:
        raise ConfigError([f"--web.systemd-socket: LISTEN_FDS {fds[:20]!r} is not 1..64"])
    del os.environ["LISTEN_FDS"], os.environ["LISTEN_PID"]
    os.environ.pop("LISTEN_FDNAMES", None)
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(fds)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as err:
            raise ConfigError([f"--web.systemd-socket: fd {fd}: {err.strerror or err}"]) from None
        if sock.type != socket.SOCK_STREAM:
            raise ConfigError([f"--web.systemd-socket: fd {fd} is not a stream socket"])
        sockets.append(sock)
    return sockets
