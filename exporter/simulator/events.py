"""Meeting events as RealtimeKit sends them (camelCase payloads), made from what happens in the
world and handed to the webhook sender. Called with the world's lock held; never blocks."""

from __future__ import annotations

from typing import Any, Protocol, cast

from exporter.simulator.answers import iso
from exporter.simulator.world import AppKey, Meeting, Session

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
    """Sends meeting and participant events, as :class:`~exporter.simulator.peers.Peers` tells
    it what happens: a session that starts sends ``meeting.started``, then one
    ``participantJoined`` per participant; one that ends sends a ``participantLeft`` for everyone
    still there, then ``meeting.ended``."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def emit(self, m: Meeting, event: str, ended: float | None = None, **extra: Any) -> None:
        """Queue one event about the meeting's current session, as it is now."""
        meeting = meeting_json(m, cast(Session, m.session), ended)
        self._sink.submit(m.app, {"event": event, "meeting": meeting, **extra})

    def meeting_started(self, m: Meeting) -> None:
        self.emit(m, "meeting.started")

    def joined(self, m: Meeting, peer: Peer) -> None:
        self.emit(m, "meeting.participantJoined", participant=peer_json(peer))

    def left(self, m: Meeting, peer: Peer, at: float) -> None:
        self.emit(m, "meeting.participantLeft", participant=peer_json(peer, at))

    def meeting_ended(self, m: Meeting, at: float, reason: str) -> None:
        self.emit(m, "meeting.ended", ended=at, reason=reason)
