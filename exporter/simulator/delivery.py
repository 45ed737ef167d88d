"""Webhook delivery: the signature RealtimeKit puts on a body, its public-key document, and the
thread that POSTs events in order with retries."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from exporter.simulator.answers import dumps

__all__ = ["WELL_KNOWN_PATH", "WebhookSender", "WebhookTarget", "sign", "well_known_body"]

WELL_KNOWN_PATH = "/.well-known/webhooks.json"
TICK_SECONDS = 0.2  # auto mode with webhooks: meetings are advanced this often
AppKey = tuple[str, str]


def well_known_body(public_key: rsa.RSAPublicKey) -> bytes:
    """The ``/.well-known/webhooks.json`` document serving ``public_key``."""
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    doc = {"success": True, "data": {"publicKey": pem}, "message": "Public key for webhooks"}
    return json.dumps(doc).encode()


def sign(private_key: rsa.RSAPrivateKey, body: bytes) -> str:
    """The ``rtk-signature`` of ``body``: base64 RSA-SHA256 PKCS#1 v1.5."""
    raw = private_key.sign(body, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(raw).decode("ascii")


def delivery_headers(
    private_key: rsa.RSAPrivateKey, webhook_id: str, body: bytes, signature: str | None = None
) -> dict[str, str]:
    """The headers RealtimeKit sends with one delivery of ``body`` (a fresh ``rtk-uuid``, kept
    for its retries); ``signature``: one made beforehand with :func:`sign`."""
    return {
        "rtk-signature": signature or sign(private_key, body),
        "rtk-uuid": str(uuid.uuid4()),
        "rtk-webhook-id": webhook_id,
        "Content-Type": "application/json",
    }


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    url: str  # a template: {account_id} and {app_id} are replaced by the event's app
    key: rsa.RSAPrivateKey
    webhook_id: str
    retries: int
    delays: tuple[float, ...]
    timeout: float
    queue_size: int

    def target(self, app: AppKey) -> str:
        account, app_id = (quote(part, safe="") for part in app)
        return self.url.replace("{account_id}", account).replace("{app_id}", app_id)


class WebhookSender:
    """Signs and POSTs events, in order, from one thread; a bounded queue feeds it.

    ``submit`` never blocks (a full queue drops the event and counts it), so the simulator may
    call it with its lock held. A delivery is retried after each delay of ``delays`` (the last
    one repeats) on a 5xx or a network error, at most ``retries`` times, with the same
    ``rtk-uuid``; any other status ends it. ``tick`` (auto mode) runs every 0.2 s between
    deliveries so meetings change, and their events go out, even when nobody polls.
    """

    def __init__(self, options: WebhookTarget, tick: Callable[[], None] | None) -> None:
        self.options = options
        self._tick = tick
        self._cond = threading.Condition()
        self._pending: deque[tuple[AppKey, dict[str, Any]]] = deque()
        self._counts = dict.fromkeys(("delivered", "failed", "retried", "dropped"), 0)
        self._last_error = ""
        self._stopping = False
        self._thread: threading.Thread | None = None

    def submit(self, app: AppKey, payload: dict[str, Any]) -> None:
        with self._cond:
            if len(self._pending) >= self.options.queue_size:
                self._counts["dropped"] += 1
                return
            self._pending.append((app, payload))
            self._cond.notify()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {**self._counts, "queued": len(self._pending), "last_error": self._last_error}

    def start(self) -> None:
        with self._cond:
            self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sim-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread after the delivery in flight (events still queued stay queued)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.options.timeout + 3)
            self._thread = None

    def _run(self) -> None:
        with httpx.Client(timeout=self.options.timeout, trust_env=False) as client:
            next_tick = time.monotonic()
            while True:
                if self._tick is not None and time.monotonic() >= next_tick:
                    self._tick()
                    next_tick = time.monotonic() + TICK_SECONDS
                wait = None if self._tick is None else max(0.0, next_tick - time.monotonic())
                with self._cond:
                    self._cond.wait_for(lambda: self._pending or self._stopping, wait)
                    if self._stopping:
                        return
                    item = self._pending.popleft() if self._pending else None
                if item is not None:
                    self._deliver(client, *item)

    def _deliver(self, client: httpx.Client, app: AppKey, payload: dict[str, Any]) -> None:
        body = dumps(payload)
        headers = delivery_headers(self.options.key, self.options.webhook_id, body)
        url, delays = self.options.target(app), self.options.delays
        for attempt in range(self.options.retries + 1):
            if attempt:
                self._count("retried")
                if self._pause(delays[min(attempt, len(delays)) - 1]):
                    return  # stopping: the event stays undelivered
            outcome = self._post(client, url, body, headers)
            if outcome != "retry":
                self._count(outcome)
                return
        self._count("failed")

    def _post(self, client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> str:
        """ "delivered", "failed" (a status not worth retrying) or "retry"."""
        try:
            status = client.post(url, content=body, headers=headers).status_code
        except httpx.HTTPError as err:
            self._note(f"{type(err).__name__}: {err}")
            return "retry"
        if 200 <= status < 300:
            return "delivered"
        self._note(f"HTTP {status}")
        return "retry" if status >= 500 else "failed"

    def _pause(self, seconds: float) -> bool:
        """Wait before a retry; True when stop() came first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._stopping, seconds)

    def _count(self, name: str) -> None:
        with self._cond:
            self._counts[name] += 1

    def _note(self, error: str) -> None:
        with self._cond:
            self._last_error = error[:200]
