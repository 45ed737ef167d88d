"""Meeting events as RealtimeKit sends them (camelCase payloads), made from what happens in the
world and handed to the webhook sender. Called with the world's lock held; never blocks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

from exporter.simulator.answers import iso
from exporter.simulator.world import AppKey, Meeting, Session, World, seeded, uuid4

Peer = tuple[str, float]  # (peer id, clock time joined)


class Sink(Protocol):
    def submit(self, app: AppKey, payload: dict[str, Any]) -> None: ...


def room_name(meeting_id: str) -> str:
    letters = "".join(c for c in meeting_id.lower() if c.isalnum())[:12].ljust(12, "x")
    return f"{letters[:6]}-{letters[6:]}"


def meeting_json(m: Meeting, s: Session, ended: float | None = None) -> dict[str, Any]:
    """The ``meeting`` object of an event about the meeting's session."""
    meeting: dict[str, Any] = {
        "id": m.id,
        "sessionId": s.id,
        "title": m.name,
        "roomName": room_name(m.id),
        "status": "LIVE" if ended is None else "ENDED",
        "createdAt": iso(s.created),
        "startedAt": iso(s.created),
        "organizedBy": {"id": m.app[1], "name": f"Organization {m.app[1][:8]}"},
    }
    if ended is not None:
        meeting["endedAt"] = iso(ended)
    return meeting


def peer_json(peer: Peer, left: float | None = None) -> dict[str, Any]:
    peer_id, joined = peer
    d: dict[str, Any] = {
        "peerId": peer_id,
        "userDisplayName": f"Participant {peer_id[:4]}",
        "customParticipantId": f"user-{peer_id[:8]}",
        "joinedAt": iso(joined),
    }
    if left is not None:
        d["leftAt"] = iso(left)
    return d


class Emitter:
    """The world's observer that sends meeting and participant events.

    A session that starts sends ``meeting.started`` and one ``participantJoined`` per participant;
    a count going up or down by k sends k joins or k leaves (made-up peer ids; the latest to join
    leaves first); a session that ends sends a ``participantLeft`` for everyone still there, then
    ``meeting.ended``. ``on_left`` hears every peer that leaves (peer reports).
    """

    def __init__(
        self,
        world: World,
        sink: Sink,
        seed: int | None,
        on_left: Callable[[Meeting, Peer, float], None] | None = None,
    ) -> None:
        self._world, self._sink = world, sink
        self._rng = seeded(seed, "peers")
        self._peers: dict[str, list[Peer]] = {}  # meeting id → participants of its session
        self._on_left = on_left

    def peers(self, meeting_id: str) -> list[Peer]:
        """The participants of the meeting's session now (a copy)."""
        return list(self._peers.get(meeting_id, ()))

    def emit(self, m: Meeting, event: str, ended: float | None = None, **extra: Any) -> None:
        """Queue one event about the meeting's current session, as it is now."""
        meeting = meeting_json(m, cast(Session, m.session), ended)
        self._sink.submit(m.app, {"event": event, "meeting": meeting, **extra})

    def started(self, m: Meeting, t: float, n: int) -> None:
        self._peers[m.id] = []
        self.emit(m, "meeting.started")
        self.changed(m, n, t)

    def changed(self, m: Meeting, change: int, t: float) -> None:
        peers, created = self._peers.setdefault(m.id, []), cast(Session, m.session).created
        real = self._world.real(t)
        for _ in range(abs(change)):
            if change > 0:
                peer: Peer = (uuid4(self._rng), real)
                peers.append(peer)
                self.emit(m, "meeting.participantJoined", participant=peer_json(peer))
            else:  # sessions from before the webhooks have participants never seen joining
                peer = peers.pop() if peers else (uuid4(self._rng), created)
                self.emit(m, "meeting.participantLeft", participant=peer_json(peer, real))
                if self._on_left is not None:
                    self._on_left(m, peer, real)

    def ended(self, m: Meeting, t: float, reason: str) -> None:
        self.changed(m, -cast(Session, m.session).live, t)
        self._peers.pop(m.id, None)
        self.emit(m, "meeting.ended", ended=self._world.real(t), reason=reason)
