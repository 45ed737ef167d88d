"""The web config in force: what the server consults on each new connection.

:func:`load_web_config` reads and checks a web config file, certificates included;
:class:`WebSecurity` holds the SSL context, the basic-auth check and the extra headers, re-read
when the config file or the files it names change; :func:`protect` wraps a WSGI app with the
headers and basic auth.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import ConfigError
from exporter.files import read_yaml
from exporter.web.auth import BasicAuth
from exporter.web.config import WebConfig, parse_web_config
from exporter.web.tls import build_ssl_context
from exporter.web.wsgi import StartResponse, WsgiApp

log = logging.getLogger("exporter.webconfig")  # the name log lines have always had


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read and check a web config file, certificates and keys included.

    Raises :class:`ConfigError` listing every problem, each naming its key path.
    """
    state, _ = _load(Path(path))
    return state.config


@dataclass(frozen=True, slots=True)
class WebState:
    """What applies to a connection: the config, its SSL context (None: plain HTTP) and auth."""

    config: WebConfig
    ssl_context: ssl.SSLContext | None
    auth: BasicAuth | None


_Stamp = tuple[int, int, int, int] | None


def _stamp(path: Path) -> _Stamp:
    try:
        st = path.stat()
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def _load(path: Path, previous: WebState | None = None) -> tuple[WebState, tuple[_Stamp, ...]]:
    """Load the web config and build what it describes; also return the stamps of its files.

    Each file is stamped before it is read, so a change made while loading shows up later.
    Every failure is a :class:`ConfigError`; what a library raises is translated here.
    """
    stamp = _stamp(path)
    data = read_yaml(path, "web config file")
    config = parse_web_config(data, path.absolute())
    stamps = (stamp, *(_stamp(f) for f in config.files[1:]))
    try:
        context = build_ssl_context(config.tls) if config.tls is not None else None
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
        raise ConfigError([f"tls_server_config: cannot be used: {err}"]) from None
    auth: BasicAuth | None = None
    if config.basic_auth_users:
        if previous is not None and previous.config.basic_auth_users == config.basic_auth_users:
            auth = previous.auth  # same users: keep the cache of good passwords
        else:
            auth = BasicAuth(config.basic_auth_users)
    return WebState(config, context, auth), stamps


class WebSecurity:
    """The web config in force, re-read when the file or a file it names changes.

    :meth:`current` is called for every new connection; at most once per ``recheck_seconds`` it
    compares the files' modification times, sizes and inodes with those of the last good load,
    and reloads when they differ. A config that does not load is logged (once per distinct error)
    and the previous one kept, so a half-written certificate never takes the exporter down; the
    load is retried on later checks until it succeeds. Turning TLS on or off needs a restart.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        recheck_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._recheck = recheck_seconds
        self._clock = clock
        self._state, self._seen = _load(self.path)  # ConfigError: the caller fails at startup
        self._checked = clock()
        self._last_error: str | None = None
        self._lock = threading.Lock()

    @property
    def state(self) -> WebState:
        """The state in force, without checking the files."""
        return self._state

    def current(self) -> WebState:
        """The state to use for a new connection, reloaded first if the files changed."""
        if self._clock() - self._checked < self._recheck:
            return self._state
        if not self._lock.acquire(blocking=False):
            return self._state  # another connection is checking; don't wait for it
        try:
            self._checked = self._clock()
            self._reload_if_changed()
        finally:
            self._lock.release()
        return self._state

    def _reload_if_changed(self) -> None:
        old = self._state
        if tuple(_stamp(f) for f in old.config.files) == self._seen:
            return
        try:
            new, stamps = _load(self.path, old)
            if (new.ssl_context is None) != (old.ssl_context is None):
                raise ConfigError(
                    [f"turning TLS {'on' if old.ssl_context is None else 'off'} needs a restart"]
                )
        except Exception as err:  # any failure keeps the config in force: HTTPS must stay up
            self._failed(err)
            return
        self._state, self._seen, self._last_error = new, stamps, None
        log.info("web config %s reloaded", self.path)

    def _failed(self, err: Exception) -> None:
        """Log a failed reload once per distinct error, on one line."""
        text = str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"
        text = " ".join(text.split())
        if text != self._last_error:
            self._last_error = text
            log.error("web config %s: not reloaded, keeping the previous one: %s", self.path, text)


def protect(app: WsgiApp, web: WebSecurity, *, basic_auth: bool = True) -> WsgiApp:
    """Wrap ``app``: the web config's headers on every answer, and basic auth on every path
    (unless ``basic_auth`` is off: the webhook listener, which RealtimeKit cannot log in to)."""

    def protected(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        state = web.current()
        extra = list(state.config.headers)

        def start_with_headers(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            return start(status, [*headers, *extra], exc_info)

        if (
            basic_auth
            and state.auth is not None
            and not state.auth.check_header(environ.get("HTTP_AUTHORIZATION"))
        ):
            body = b"Unauthorized\n"
            start_with_headers(
                "401 Unauthorized",
                [
                    ("WWW-Authenticate", "Basic"),
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]
        return app(environ, start_with_headers)

    return protected
