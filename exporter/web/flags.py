"""The web flags every exporter shares, as exporter-toolkit's ``kingpinflag.AddFlags`` adds them.

    >>> parser = argparse.ArgumentParser()
    >>> add_flags(parser, ":9877", demo_note="127.0.0.1:9877 in demo")
    >>> parser.parse_args(["--web.listen-address", ":1", "--web.listen-address", ":2"])
    Namespace(listen_address=[':1', ':2'], systemd_socket=False, web_config_file='')

``listen_address`` is None when the flag is not given: the caller applies its default.
"""

from __future__ import annotations

import argparse


def add_flags(parser: argparse.ArgumentParser, default: str, *, demo_note: str = "") -> None:
    """Add ``--web.listen-address`` (repeatable), ``--web.systemd-socket`` and
    ``--web.config.file`` to ``parser``."""
    also = f", or {demo_note}" if demo_note else ""
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        action="append",
        metavar="HOST:PORT",
        help=f"address to serve on; repeat for more (default: {default}{also})",
    )
    parser.add_argument(
        "--web.systemd-socket",
        dest="systemd_socket",
        action="store_true",
        help="serve on the sockets systemd passes (socket activation) instead of listening",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default="",
        metavar="PATH",
        help="web config for TLS, basic auth and headers (exporter-toolkit format)",
    )
