"""What needs no token: the control endpoints (``/_sim/…``, JSON commands that drive the
simulator from outside the process, each answered with the state it changed), ``/-/healthy`` and
the webhook public key at ``/.well-known/webhooks.json``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from cryptography.hazmat.primitives.asymmetric import rsa

from exporter.simulator.answers import Answer, control
from exporter.simulator.delivery import WELL_KNOWN_PATH, well_known_body

# (the path after the prefix, the JSON command) → what to answer besides {"ok": true}
Command = Callable[[str, dict[str, Any]], dict[str, Any]]


class Controls:
    """``GET /_sim/stats``, ``POST /_sim/<prefix>/<target>`` for each registered prefix, the
    health check and the webhook public key (when there is one)."""

    def __init__(
        self, stats: Callable[[], dict[str, Any]], public_key: rsa.RSAPublicKey | None
    ) -> None:
        self._stats = stats
        self._commands: dict[str, Command] = {}
        self._well_known = None if public_key is None else well_known_body(public_key)

    def add(self, prefix: str, command: Command) -> None:
        """Serve ``POST /_sim/<prefix>/…`` (prefix like ``"meetings"``)."""
        self._commands[f"/_sim/{prefix}/"] = command

    def answer(self, method: str, path: str, body: bytes) -> Answer | None:
        """The answer to a request of ``path``, None when it is an API request."""
        if path == "/-/healthy":
            return Answer(200, b"ok", "text/plain; charset=utf-8")
        if path == WELL_KNOWN_PATH:
            return self._public_key(method)
        if not path.startswith("/_sim/"):
            return None
        if path == "/_sim/stats":
            if method != "GET":
                return control(405, {"ok": False, "error": "use GET"})
            return control(200, self._stats())
        for prefix, command in self._commands.items():
            if path.startswith(prefix) and len(path) > len(prefix):
                if method != "POST":
                    return control(405, {"ok": False, "error": "use POST"})
                return self._run(command, unquote(path[len(prefix) :]), body)
        return control(404, {"ok": False, "error": "unknown control endpoint"})

    def _public_key(self, method: str) -> Answer:
        if method != "GET":
            ans = control(405, {"ok": False, "error": "use GET"})
            ans.headers.append(("Allow", "GET"))
            return ans
        if self._well_known is None:
            return control(404, {"ok": False, "error": "no webhook key"})
        return Answer(200, self._well_known)

    @staticmethod
    def _run(command: Command, target: str, body: bytes) -> Answer:
        try:
            cmd = json.loads(body or b"{}")
            if not isinstance(cmd, dict):
                raise ValueError("body must be a JSON object")
            return control(200, {"ok": True, **command(target, cmd)})
        except KeyError as exc:
            return control(404, {"ok": False, "error": str(exc.args[0])})
        except (ValueError, TypeError) as exc:
            return control(400, {"ok": False, "error": str(exc)})


def split_app(target: str) -> tuple[str, str]:
    """(account, app) of a control target ``ACCOUNT/APP``; ValueError otherwise."""
    account, _, app = target.partition("/")
    if not account or not app or "/" in app:
        raise ValueError("expected /_sim/apps/{account_id}/{app_id}")
    return account, app


def integer(cmd: dict[str, Any], name: str) -> int:
    value = cmd[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer")
    return value
