"""Participants as peers: ids that join and leave a session (``meeting.participantJoined`` /
``participantLeft`` with ``participant.peerId``) and, once a peer has left, its peer report at
``GET /sessions/peer-report/{peer_id}``.

A report is made when its peer leaves, after its quality: ``good`` (MOS 4.1-4.5, loss under
0.5 %, RTT 20-80 ms), or ``bad`` (MOS 1.8-3.2, loss 3-15 %, RTT 250-700 ms) with
``peer_bad_rate``; every stream kind (audio and video, sent and received, and a shared screen),
or with ``peer_partial_rate`` only some (audio alone, or only what it received). With
``peer_late_rate`` it is not there for ``peer_late_seconds`` after the peer left (404), with
``peer_missing_rate`` never. :meth:`Peers.set_report` overrides any of this for one peer.
The simulator ignores ``filters`` and always sends the report's metadata (IP, ASN, device,
browser, user ids: fakes containing ``SECRET``, addresses from 203.0.113.0/24), so a leak test
sees it whatever the exporter asks for.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from exporter.simulator.answers import Answer, iso, ok, rtk_error
from exporter.simulator.events import Emitter, Peer
from exporter.simulator.media import SECRET
from exporter.simulator.options import SimOptions
from exporter.simulator.world import AppKey, Meeting, Session, World, seeded, uuid4

BASE = ("audio_producer", "audio_consumer", "video_producer", "video_consumer")
SCREEN = ("screenshare_video_producer", "screenshare_video_consumer")
ALL_KINDS = (*BASE, *SCREEN, "screenshare_audio_producer", "screenshare_audio_consumer")
QUALITIES = ("good", "bad")
KEEP_REPORTS = 100_000  # reports of the peers that left longest ago are forgotten first


@dataclass(slots=True)
class Report:
    peer_id: str
    app: AppKey
    meeting_id: str
    session_id: str
    joined: float  # clock times
    left: float
    quality: str  # good, bad
    kinds: tuple[str, ...]  # stream kinds present (their *_cumulative blocks)
    delay: float  # seconds after leaving before the report exists (inf: never)
    broken: bool = False  # its first block has MOS 7.5, loss -1 % and a null RTT


def cumulative(kind: str, quality: str, rng: random.Random) -> dict[str, Any]:
    """One ``<kind>_cumulative`` block: producers carry RTT, consumers jitter buffer delay."""
    good = quality == "good"
    mos = rng.uniform(4.1, 4.5) if good else rng.uniform(1.8, 3.2)
    loss = rng.uniform(0.0, 0.5) if good else rng.uniform(3.0, 15.0)  # percent
    block: dict[str, Any] = {
        "quality_mos": {
            "avg": round(mos, 3),
            "p50": round(mos, 3),
            "p75": round(min(5.0, mos + 0.1), 3),
            "p90": round(min(5.0, mos + 0.2), 3),
        },
        "packet_loss": {
            "avg": round(loss, 4),
            "5_or_greater_event_fraction": 0.0 if good else 0.4,
            "10_or_greater_event_fraction": 0.0 if good else 0.2,
            "25_or_greater_event_fraction": 0.0 if good else 0.05,
            "50_or_greater_event_fraction": 0.0,
        },
    }
    ms = rng.uniform(20.0, 80.0) if good else rng.uniform(250.0, 700.0)
    fractions = {
        "100ms_or_greater_event_fraction": 0.0 if good else 0.9,
        "250ms_or_greater_event_fraction": 0.0 if good else 0.5,
        "500ms_or_greater_event_fraction": 0.0 if good else 0.1,
    }
    if kind.endswith("producer"):
        block["rtt"] = {"avg": round(ms, 2), **fractions}
    else:
        block["jitter_buffer_delay"] = {"avg": round(ms / 2, 2), **fractions}
    return block


def metadata(peer_id: str, rng: random.Random) -> dict[str, Any]:
    """What must stay private: IP, ASN, device, browser."""
    return {
        "ip_information": {
            "ipv4": f"203.0.113.{rng.randint(1, 254)}",
            "asn": {"asn": "AS64500", "name": f"{SECRET} ISP", "domain": f"{SECRET}-isp.invalid"},
            "city": f"{SECRET} City",
            "country": "ZZ",
            "org": f"{SECRET} Org",
        },
        "device_info": {"cpus": 8, "is_mobile": False, "os": f"{SECRET}-os", "os_version": "1"},
        "browser_metadata": {
            "browser": f"{SECRET}-browser",
            "browser_version": "1.0",
            "user_agent": f"Mozilla/5.0 ({SECRET}; {peer_id[:8]})",
        },
        "pc_metadata": [{"turn_connectivity": True, "relay_connectivity": rng.random() < 0.2}],
        "sdk_name": "web-core",
    }


class Peers:
    """The world's observer keeping every session's peers and the reports of those that left;
    it tells the :class:`Emitter` (when there are webhooks). Control methods are thread-safe."""

    def __init__(self, world: World, options: SimOptions, emitter: Emitter | None) -> None:
        self._world, self._emitter, self._seed = world, emitter, options.seed
        self._ids = seeded(options.seed, "peers")  # peer ids, in the order they always were
        self._draw = seeded(options.seed, "peer-reports")
        self._o = options
        self._now: dict[str, list[Peer]] = {}  # meeting id → peers in its session
        self.reports: OrderedDict[str, Report] = OrderedDict()

    # -- control ----------------------------------------------------------------------------

    def current(self, meeting_id: str) -> list[str]:
        """Peer ids in the meeting's session now, in the order they joined."""
        with self._world.lock:
            self._world.touch(meeting_id)
            return [p[0] for p in self._now.get(meeting_id, ())]

    def gone(self, meeting_id: str | None = None) -> list[str]:
        """Peer ids that left (every meeting's, or one's), in the order they left."""
        with self._world.lock:
            self._world.advance_due(self._world.sim_now())
            return [p for p, r in self.reports.items() if meeting_id in (None, r.meeting_id)]

    def leave(self, meeting_id: str, peer_id: str | None = None) -> str:
        """One peer (default: the latest to join) leaves the meeting's session; its id."""
        with self._world.lock:
            m, now = self._world.touch(meeting_id)
            peers = self._now.get(meeting_id, [])
            chosen = [p for p in peers if peer_id in (None, p[0])]
            if m.session is None or m.session.ended is not None or not chosen:
                raise KeyError(f"no such peer in meeting {meeting_id}: {peer_id}")
            peers.remove(chosen[-1])
            peers.append(chosen[-1])  # the latest to join leaves first: make it this one
            self._world.set_live(m, now, m.session.live - 1)
            return chosen[-1][0]

    def set_report(
        self,
        peer_id: str,
        *,
        quality: str | None = None,
        kinds: Iterable[str] | None = None,
        delay: float | None = None,
        broken: bool | None = None,
    ) -> None:
        """Change a left peer's report: its quality, stream kinds, seconds after leaving before
        it exists (``math.inf``: never), or values out of range (``broken``)."""
        if quality is not None and quality not in QUALITIES:
            raise ValueError(f"quality must be one of {list(QUALITIES)}, got {quality!r}")
        chosen = None if kinds is None else tuple(kinds)
        if chosen is not None and (bad := [k for k in chosen if k not in ALL_KINDS]):
            raise ValueError(f"unknown stream kinds {bad}; known: {list(ALL_KINDS)}")
        if delay is not None and not delay >= 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        with self._world.lock:
            report = self._report(peer_id)
            report.quality = quality or report.quality
            report.kinds = report.kinds if chosen is None else chosen
            report.delay = report.delay if delay is None else delay
            report.broken = report.broken if broken is None else broken

    def report(self, peer_id: str) -> dict[str, Any] | None:
        """The report as it would be served now (None: a 404 now)."""
        with self._world.lock:
            report = self._report(peer_id)
            return self.served(report) if self.available(report) else None

    def report_kinds(self, peer_id: str) -> list[str]:
        """The stream kinds the peer's report carries (its ``*_cumulative`` blocks)."""
        with self._world.lock:
            return list(self._report(peer_id).kinds)

    # -- observer (the caller holds the world's lock) ---------------------------------------

    def started(self, m: Meeting, t: float, n: int) -> None:
        self._now[m.id] = []
        if self._emitter is not None:
            self._emitter.meeting_started(m)
        self.changed(m, n, t)

    def changed(self, m: Meeting, change: int, t: float) -> None:
        peers, created = self._now.setdefault(m.id, []), cast(Session, m.session).created
        real = self._world.real(t)
        for _ in range(abs(change)):
            if change > 0:
                peer: Peer = (uuid4(self._ids), real)
                peers.append(peer)
                if self._emitter is not None:
                    self._emitter.joined(m, peer)
            else:  # sessions from before the peers were kept have peers never seen joining
                peer = peers.pop() if peers else (uuid4(self._ids), created)
                if self._emitter is not None:
                    self._emitter.left(m, peer, real)
                self._keep(m, peer, real)

    def ended(self, m: Meeting, t: float, reason: str) -> None:
        self.changed(m, -cast(Session, m.session).live, t)
        self._now.pop(m.id, None)
        if self._emitter is not None:
            self._emitter.meeting_ended(m, self._world.real(t), reason)

    # -- inside -----------------------------------------------------------------------------

    def available(self, report: Report) -> bool:
        return self._world.clock() >= report.left + report.delay

    def served(self, report: Report) -> dict[str, Any]:
        """``data`` of the peer-report answer."""
        rng = random.Random(f"{self._seed}:report:{report.peer_id}")
        quality = {f"{k}_cumulative": cumulative(k, report.quality, rng) for k in report.kinds}
        if report.broken and quality:
            first = next(iter(quality.values()))
            first["quality_mos"]["avg"], first["packet_loss"]["avg"] = 7.5, -1.0
            first.get("rtt", first.get("jitter_buffer_delay", {}))["avg"] = None
        participant = {
            "id": uuid4(rng),
            "created_at": iso(report.joined),
            "custom_participant_id": f"{SECRET}-user-{report.peer_id[:8]}",
            "display_name": f"{SECRET} Participant {report.peer_id[:4]}",
            "duration": round((report.left - report.joined) / 60, 3),
            "joined_at": iso(report.joined),
            "left_at": iso(report.left),
            "session_id": report.session_id,
            "peer_report": {"metadata": metadata(report.peer_id, rng), "quality": quality},
        }
        return {"participant": participant}

    def _keep(self, m: Meeting, peer: Peer, left: float) -> None:
        o, draw = self._o, self._draw.random
        kinds: tuple[str, ...] = (*BASE, *SCREEN) if draw() < 0.3 else BASE
        if draw() < o.peer_partial_rate:
            kinds = BASE[:2] if draw() < 0.5 else ("audio_consumer", "video_consumer")
        r = draw()
        delay = math.inf if r < o.peer_missing_rate else 0.0
        if o.peer_missing_rate <= r < o.peer_missing_rate + o.peer_late_rate:
            delay = o.peer_late_seconds
        quality = "bad" if draw() < o.peer_bad_rate else "good"
        session = cast(Session, m.session).id
        self.reports[peer[0]] = Report(
            peer[0], m.app, m.id, session, peer[1], left, quality, kinds, delay
        )
        while len(self.reports) > KEEP_REPORTS:
            self.reports.popitem(last=False)

    def _report(self, peer_id: str) -> Report:
        report = self.reports.get(peer_id)
        if report is None:
            raise KeyError(f"unknown peer {peer_id} (or it has not left)")
        return report


class PeerReportEndpoint:
    """``GET …/sessions/peer-report/{peer_id}``."""

    def __init__(self, peers: Peers, world: World) -> None:
        self._peers, self._world = peers, world

    def report(self, app: AppKey, peer_id: str, _query: str, fault: str | None) -> Answer:
        with self._world.lock:
            self._world.advance_due(self._world.sim_now())
            report = self._peers.reports.get(peer_id)
            found = report is not None and report.app == app and self._peers.available(report)
            data = self._peers.served(cast(Report, report)) if found else None
        if data is None:
            return rtk_error(404, f"No peer report found for peer_id {peer_id}")
        if fault == "wrong_types":
            data["participant"]["peer_report"]["quality"] = "not an object"
        return ok({"success": True, "data": data})
