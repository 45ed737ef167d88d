"""Webhook registrations, as ``GET /webhooks`` serves them, and the rule that decides which
events go out: like RealtimeKit, the simulator delivers an event of an app only while an enabled
registration of that app has the simulator's webhook URL and lists the event.

With ``webhook_url`` (and ``register_webhooks``, the default) every app gets one registration of
that URL with every event when it is created, so events flow as before; a test then disables,
deletes or changes it (:class:`Registrations`) to see what the exporter says.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from exporter.simulator.answers import Answer, iso, ok
from exporter.simulator.events import Sink
from exporter.simulator.world import AppKey, seeded, uuid4

ALL_EVENTS = (
    "meeting.started",
    "meeting.ended",
    "meeting.participantJoined",
    "meeting.participantLeft",
    "meeting.chatSynced",
    "recording.statusUpdate",
    "livestreaming.statusUpdate",
    "meeting.transcript",
    "meeting.summary",
)


@dataclass(slots=True)
class Registration:
    id: str
    app: AppKey
    name: str
    url: str
    events: tuple[str, ...]
    enabled: bool
    created: float
    updated: float = field(default=0.0)

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "url": self.url,
            "enabled": self.enabled,
            "events": list(self.events),
            "created_at": iso(self.created),
            "updated_at": iso(self.updated or self.created),
        }


class Registrations:
    """Every app's webhook registrations; thread-safe. ``target`` is the URL the simulator
    delivers an app's events to (None: it delivers nothing)."""

    def __init__(
        self,
        main_app: AppKey,
        clock: Callable[[], float],
        target: Callable[[AppKey], str] | None,
        seed: int | None,
    ) -> None:
        self._main, self._clock, self._target = main_app, clock, target
        self._rng = seeded(seed, "registrations")
        self._by_id: dict[str, Registration] = {}
        self._lock = threading.Lock()
        self._names = itertools.count(1)
        self.withheld = 0  # events not delivered for want of a registration

    def add(
        self,
        url: str | None = None,
        *,
        events: Iterable[str] = ALL_EVENTS,
        enabled: bool = True,
        name: str | None = None,
        account_id: str | None = None,
        app_id: str | None = None,
    ) -> str:
        """Register ``url`` (default: where the simulator delivers) for an app (default: the
        constructor's); returns the registration's id."""
        app = (account_id or self._main[0], app_id or self._main[1])
        if url is None:
            if self._target is None:
                raise ValueError("url is needed: the simulator has no webhook_url")
            url = self._target(app)
        chosen = _events(events)
        with self._lock:
            rid = uuid4(self._rng)
            label = name or f"exporter-{next(self._names)}"
            self._by_id[rid] = Registration(rid, app, label, url, chosen, enabled, self._clock())
            return rid

    def disable(self, registration_id: str) -> None:
        self._change(registration_id, enabled=False)

    def enable(self, registration_id: str) -> None:
        self._change(registration_id, enabled=True)

    def set_events(self, registration_id: str, events: Iterable[str]) -> None:
        self._change(registration_id, events=_events(events))

    def set_url(self, registration_id: str, url: str) -> None:
        self._change(registration_id, url=url)

    def delete(self, registration_id: str) -> None:
        with self._lock:
            if self._by_id.pop(registration_id, None) is None:
                raise KeyError(f"unknown registration {registration_id}")

    def list(
        self, account_id: str | None = None, app_id: str | None = None
    ) -> list[dict[str, Any]]:
        """An app's registrations as ``GET /webhooks`` serves them."""
        app = (account_id or self._main[0], app_id or self._main[1])
        with self._lock:
            return [r.json() for r in self._by_id.values() if r.app == app]

    def allows(self, app: AppKey, event: str) -> bool:
        """Whether an enabled registration of ``app`` sends ``event`` to the simulator's URL."""
        if self._target is None:
            return False
        url = self._target(app).rstrip("/")
        with self._lock:
            return any(
                r.app == app and r.enabled and event in r.events and r.url.rstrip("/") == url
                for r in self._by_id.values()
            )

    def _change(self, registration_id: str, **values: Any) -> None:
        with self._lock:
            reg = self._by_id.get(registration_id)
            if reg is None:
                raise KeyError(f"unknown registration {registration_id}")
            for name, value in values.items():
                setattr(reg, name, value)
            reg.updated = self._clock()


def _events(events: Iterable[str]) -> tuple[str, ...]:
    if isinstance(events, str):
        raise ValueError("events must be a list of event names, not one string")
    chosen = tuple(events)
    if bad := [e for e in chosen if e not in ALL_EVENTS]:
        raise ValueError(f"unknown events {bad}; known: {list(ALL_EVENTS)}")
    return chosen


class GatedSink:
    """Hands an event to the sender only while a registration allows it (else counts it)."""

    def __init__(self, sink: Sink, registrations: Registrations) -> None:
        self._sink, self._registrations = sink, registrations

    def submit(self, app: AppKey, payload: dict[str, Any]) -> None:
        if self._registrations.allows(app, str(payload.get("event"))):
            self._sink.submit(app, payload)
        else:
            self._registrations.withheld += 1


def webhooks_answer(registrations: Registrations, app: AppKey, fault: str | None) -> Answer:
    """``GET …/webhooks``."""
    data: Any = registrations.list(*app)
    if fault == "wrong_types" and data:
        data[0] = {**data[0], "enabled": "yes", "events": "meeting.started"}
    return ok({"success": True, "data": data})
