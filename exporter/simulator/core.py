"""The :class:`Simulator`: the world, the API and the webhook sender put together behind one
object with thread-safe control methods."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from exporter.simulator.answers import Answer
from exporter.simulator.api import Api
from exporter.simulator.control import Controls, integer, split_app
from exporter.simulator.delivery import (
    WELL_KNOWN_PATH,
    WebhookSender,
    WebhookTarget,
)
from exporter.simulator.events import Emitter
from exporter.simulator.faults import Faults, check_fault
from exporter.simulator.livestreams import LivestreamEndpoints, Streamer
from exporter.simulator.options import SimOptions
from exporter.simulator.peers import PeerReportEndpoint, Peers
from exporter.simulator.recordings import Recorder, RecordingEndpoints
from exporter.simulator.registrations import (
    ALL_EVENTS,
    GatedSink,
    Registrations,
    webhooks_answer,
)
from exporter.simulator.server import Listener
from exporter.simulator.sessions import SessionEndpoints, session_json
from exporter.simulator.usage import FIELDS as USAGE_FIELDS
from exporter.simulator.usage import Usage, UsageEndpoints
from exporter.simulator.world import HOST_ENDED, AppKey, World, seeded, uuid4


class Simulator:
    """A RealtimeKit API look-alike; see the package docstring. Control methods are thread-safe.

    ``Simulator(options)`` or ``Simulator(**kwargs)`` with :class:`SimOptions`' fields (both:
    the kwargs replace those of ``options``).
    """

    def __init__(self, options: SimOptions | None = None, /, **kwargs: Any) -> None:
        self.options = o = SimOptions.of(options, **kwargs)
        self.account_id, self.app_id = o.account_id, o.app_id
        self._main_app: AppKey = (o.account_id, o.app_id)
        self._world = world = World(o)
        self._stop = threading.Event()
        self._api = Api(world, o, Faults(o, self._stop))
        self.webhook_id = uuid4(seeded(o.seed, "webhook"))
        self.webhook_key, self._hooks = _webhooks(o, self.webhook_id, self._tick)
        target = None if self._hooks is None else self._hooks.options.target
        self.registrations = Registrations(self._main_app, o.clock, target, o.seed)
        sink = None if self._hooks is None else GatedSink(self._hooks, self.registrations)
        self.recordings = Recorder(world, o, sink)
        self.livestreams = Streamer(world, o, sink)
        self.usage = Usage(world, self.recordings, o)
        world.observers.append(self.usage)
        _routes(self._api, world, self)
        self._controls = _Commands(self, world, self._hooks).controls()
        self._listener = Listener(self._respond, self._stop)
        meetings = o.meetings if isinstance(o.meetings, int) else list(o.meetings)
        self.add_app(o.account_id, o.app_id, meetings, live=o.live)
        # told after the constructor's meetings: their sessions were there before, no events
        self.peers = Peers(world, o, None if sink is None else Emitter(sink))
        world.observers += [self.peers, self.recordings, self.livestreams]

    # -- setup ------------------------------------------------------------------------------

    @property
    def meeting_ids(self) -> list[str]:
        """Meeting ids of the constructor's app, in creation order (a copy)."""
        with self._world.lock:
            return [m.id for m in self._world.apps[self._main_app]]

    def add_app(
        self,
        account_id: str,
        app_id: str,
        meetings: int | list[str],
        *,
        live: bool = False,
        participants: int = 1,
    ) -> list[str]:
        """Add meetings to an account/app (created if needed); returns the new meeting ids.

        With ``live=True`` every new meeting starts a LIVE session of ``participants`` at once
        (cheap enough for 100,000 meetings with ``auto=False``).
        """
        if live and participants < 1:
            raise ValueError(f"participants must be >= 1, got {participants!r}")
        app = (account_id, app_id)
        with self._world.lock:
            if app not in self._world.apps and self._hooks and self.options.register_webhooks:
                self.registrations.add(account_id=account_id, app_id=app_id)
            return self._world.create(app, meetings, participants if live else 0)

    def add_meeting(self, meeting_id: str) -> None:
        """Add one meeting to the constructor's app."""
        self.add_app(*self._main_app, [meeting_id])

    # -- deterministic control --------------------------------------------------------------

    def set_participants(self, meeting_id: str, n: int) -> None:
        """Set live participants; n > 0 starts a new LIVE session if there is none (or it ended)."""
        if n < 0:
            raise ValueError("participants must be >= 0")
        with self._world.lock:
            m, now = self._world.touch(meeting_id)
            if m.session is None or m.session.ended is not None:
                if n > 0:
                    self._world.start_session(m, now, n)
            else:
                self._world.set_live(m, now, n)

    def end_session(self, meeting_id: str) -> None:
        """Everyone leaves: the session turns ENDED (still served until clear_session)."""
        with self._world.lock:
            m, now = self._world.touch(meeting_id)
            if m.session is not None:
                self._world.end(m, now, HOST_ENDED)

    def clear_session(self, meeting_id: str) -> None:
        """Drop the meeting's session: active-session answers 404 from now on."""
        with self._world.lock:
            m, now = self._world.touch(meeting_id)
            if m.session is not None and m.session.ended is None:
                self._world.tell_ended(m, now, HOST_ENDED)
            self._world.clear(m, now)

    def set_fault(self, meeting_id: str, kind: str | None) -> None:
        """Force a fault (one of ``FAULT_KINDS``) on every active-session request of this meeting
        (None clears it)."""
        check_fault(kind)
        with self._world.lock:
            self._world.touch(meeting_id)[0].fault = kind

    def set_listing_fault(
        self, kind: str | None, account_id: str | None = None, app_id: str | None = None
    ) -> None:
        """Force a fault on every ``/sessions`` request of an app (default: the constructor's);
        any of ``FAULT_KINDS`` but ``not_found``; None clears it."""
        self.set_endpoint_fault("sessions", kind, account_id, app_id)

    def set_endpoint_fault(
        self,
        endpoint: str,
        kind: str | None,
        account_id: str | None = None,
        app_id: str | None = None,
    ) -> None:
        """Force a fault on every request of an app's endpoint other than active-session
        (``sessions``, ``recordings``, ``livestreams``, ``daywise``, ``webhooks``,
        ``peer_report``, ``active_recording``, ``active_livestream``); None clears it."""
        check_fault(kind, listing=True)
        self._api.force(endpoint, kind, (account_id or self.account_id, app_id or self.app_id))

    def endpoint_fault(
        self, endpoint: str, account_id: str | None = None, app_id: str | None = None
    ) -> str | None:
        """The fault forced on an app's endpoint (None: none)."""
        return self._api.forced.get(
            ((account_id or self.account_id, app_id or self.app_id), endpoint)
        )

    def session(self, meeting_id: str) -> dict[str, Any] | None:
        """The meeting's current session object as it would be served, or None."""
        with self._world.lock:
            m, _ = self._world.touch(meeting_id)
            return None if m.session is None else session_json(m, m.session)

    def request_count(self, token: str | None = None) -> int:
        """API requests received (control and health endpoints excluded), total or per token."""
        return self._api.request_count(token)

    def status_counts(self) -> dict[int, int]:
        """HTTP statuses answered so far; 0 counts connections reset without an answer."""
        return self._api.status_counts()

    def request_log(self) -> list[tuple[float, str, int]]:
        """(clock time received, request target with query, status) of the last 100k requests."""
        return self._api.request_log()

    def live_session_count(self, account_id: str | None = None, app_id: str | None = None) -> int:
        """LIVE sessions of an app (default: the constructor's) right now."""
        key = (account_id or self.account_id, app_id or self.app_id)
        with self._world.lock:
            self._world.advance_due(self._world.sim_now())
            return len(self._world.index[key].live.items())

    # -- server lifecycle -------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind and serve in a daemon thread."""
        self._listener.start(host, port)
        if self._hooks is not None:
            self._hooks.start()

    def stop(self) -> None:
        """Stop serving, end waiting and streaming answers, close open connections and wait (up
        to 5 s) for their threads to finish (idempotent)."""
        if self._listener.stop() and self._hooks is not None:
            self._hooks.stop()

    def __enter__(self) -> Simulator:
        if not self._listener.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._listener.address[1]

    @property
    def base_url(self) -> str:
        host, port = self._listener.address
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/client/v4"

    @property
    def webhook_key_url(self) -> str:
        """Where the simulator serves its webhook public key (``/.well-known/webhooks.json``)."""
        if self.webhook_key is None:
            raise RuntimeError("simulator has no webhook key")
        return self.base_url.removesuffix("/client/v4") + WELL_KNOWN_PATH

    def webhook_stats(self) -> dict[str, Any]:
        """Webhook deliveries: ``delivered``, ``failed`` (not 2xx after the retries, or a 4xx),
        ``retried`` (attempts after the first), ``dropped`` (queue full), ``queued`` now, and
        ``last_error``; as under ``"webhooks"`` in ``GET /_sim/stats``."""
        if self._hooks is None:
            raise RuntimeError("simulator has no webhook_url")
        return self._hooks.stats()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- inside -----------------------------------------------------------------------------

    def _tick(self) -> None:
        """Apply every change due by now (auto mode with webhooks: their events go out)."""
        with self._world.lock:
            now = self._world.sim_now()
            self.recordings.advance(now)
            self.livestreams.advance(now)

    def _respond(self, method: str, target: str, fields: dict[str, str], body: bytes) -> Answer:
        ans = self._controls.answer(method, target.partition("?")[0], body)
        if ans is None:
            now = self.options.clock()
            ans = self._api.handle(method, target, fields.get("authorization"), now)
        return ans


def _routes(api: Api, world: World, sim: Simulator) -> None:
    """Every API endpoint of the simulator, on its handler."""
    o = sim.options
    sessions = SessionEndpoints(world, o)
    api.add("active", lambda app, mid, _q, fault: sessions.active(app, mid, fault))
    api.add("sessions", sessions.endpoint)
    recordings = RecordingEndpoints(sim.recordings, world, o)
    api.add("recordings", recordings.listing)
    api.add("active_recording", recordings.active)
    livestreams = LivestreamEndpoints(sim.livestreams, world, o)
    api.add("livestreams", livestreams.listing)
    api.add("active_livestream", livestreams.active)
    api.add("daywise", UsageEndpoints(sim.usage, world).daywise)
    api.add("webhooks", lambda app, _a, _q, fault: webhooks_answer(sim.registrations, app, fault))
    api.add("peer_report", lambda *args: PeerReportEndpoint(sim.peers, world).report(*args))


def _webhooks(
    o: SimOptions, webhook_id: str, tick: Callable[[], None]
) -> tuple[rsa.RSAPrivateKey | None, WebhookSender | None]:
    """The key to sign with (made when a URL needs one) and the sender (when there is a URL)."""
    key = o.webhook_key
    if o.webhook_url is None:
        return key, None
    if key is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    target = WebhookTarget(
        o.webhook_url,
        key,
        webhook_id,
        o.webhook_retries,
        o.webhook_retry_delays,
        o.webhook_timeout,
        o.webhook_queue_size,
    )
    return key, WebhookSender(target, tick if o.auto else None)


class _Commands:
    """The control endpoints' commands, on a simulator's control methods."""

    def __init__(self, sim: Simulator, world: World, hooks: WebhookSender | None) -> None:
        self._sim, self._world, self._hooks = sim, world, hooks

    def controls(self) -> Controls:
        key = self._sim.webhook_key
        controls = Controls(self.stats, None if key is None else key.public_key())
        for prefix in ("meetings", "apps", "recordings", "recording", "livestreams"):
            controls.add(prefix, getattr(self, prefix))
        for prefix in ("livestream", "registrations", "register", "usage", "peers", "peer"):
            controls.add(prefix, getattr(self, prefix))
        return controls

    def stats(self) -> dict[str, Any]:
        world, sim = self._world, self._sim
        with world.lock:
            world.advance_due(world.sim_now())
            counts = {
                "meetings": len(world.meetings),
                "live_sessions": sum(len(i.live.items()) for i in world.index.values()),
                "recordings": len(sim.recordings.shelf.by_id),
                "livestreams": len(sim.livestreams.shelf.by_id),
            }
        hooks = {} if self._hooks is None else {"webhooks": self._hooks.stats()}
        return sim._api.stats() | counts | hooks

    def meetings(self, meeting_id: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST /_sim/meetings/{id} {"fault", "participants", "end", "clear"}: the session."""
        with self._world.lock:
            if meeting_id not in self._world.meetings:
                raise KeyError(f"unknown meeting {meeting_id}")
        if "fault" in cmd:
            self._sim.set_fault(meeting_id, cmd["fault"])
        if "participants" in cmd:
            self._sim.set_participants(meeting_id, integer(cmd, "participants"))
        if cmd.get("end"):
            self._sim.end_session(meeting_id)
        if cmd.get("clear"):
            self._sim.clear_session(meeting_id)
        return {"session": self._sim.session(meeting_id)}

    def apps(self, target: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST /_sim/apps/{account}/{app} {"fault": kind or null, "endpoint": name}: the fault
        of an endpoint (default: the /sessions listing)."""
        account, app = split_app(target)
        endpoint = str(cmd.get("endpoint", "sessions"))
        if "fault" in cmd:
            self._sim.set_endpoint_fault(endpoint, cmd["fault"], account, app)
        return {"fault": self._sim.endpoint_fault(endpoint, account, app)}

    def recordings(self, meeting_id: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST /_sim/recordings/{meeting_id} {"status", "plan"}: a new recording."""
        status, plan = str(cmd.get("status", "INVOKED")), str(cmd.get("plan", "manual"))
        rid = self._sim.recordings.start(meeting_id, status=status, plan=plan)
        return {"recording": self._sim.recordings.get(rid)}

    def recording(self, recording_id: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST /_sim/recording/{id} {"status": S} or {"step": true}: change it."""
        if "status" in cmd:
            self._sim.recordings.set_status(recording_id, str(cmd["status"]))
        if cmd.get("step"):
            self._sim.recordings.step(recording_id)
        return {"recording": self._sim.recordings.get(recording_id)}

    def livestreams(self, meeting_id: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST /_sim/livestreams/{meeting_id} {"status", "plan"}: a new livestream."""
        status, plan = str(cmd.get("status", "INVOKED")), str(cmd.get("plan", "manual"))
        sid = self._sim.livestreams.start(meeting_id, status=status, plan=plan)
        return {"livestream": self._sim.livestreams.get(sid)}

    def livestream(self, stream_id: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST /_sim/livestream/{id} {"status": S}: change it."""
        if "status" in cmd:
            self._sim.livestreams.set_status(stream_id, str(cmd["status"]))
        return {"livestream": self._sim.livestreams.get(stream_id)}

    def register(self, target: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST /_sim/register/{account}/{app} {"url", "events", "enabled", "name"}: a new
        webhook registration."""
        account, app = split_app(target)
        regs = self._sim.registrations
        url, events = cmd.get("url"), cmd.get("events", ALL_EVENTS)
        rid = regs.add(
            None if url is None else str(url),
            events=events if isinstance(events, (list, tuple)) else str(events),
            enabled=bool(cmd.get("enabled", True)),
            name=None if cmd.get("name") is None else str(cmd["name"]),
            account_id=account,
            app_id=app,
        )
        return {"id": rid, "registrations": regs.list(account, app)}

    def registrations(self, registration_id: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST /_sim/registrations/{id} {"enabled": B, "events": [...], "url": U} or
        {"delete": true}."""
        regs = self._sim.registrations
        if cmd.get("delete"):
            regs.delete(registration_id)
            return {}
        if "enabled" in cmd:
            (regs.enable if cmd["enabled"] else regs.disable)(registration_id)
        if "events" in cmd:
            events = cmd["events"]
            regs.set_events(registration_id, events if isinstance(events, list) else str(events))
        if "url" in cmd:
            regs.set_url(registration_id, str(cmd["url"]))
        return {}

    def usage(self, target: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST /_sim/usage/{account}/{app} {"day", "sessions", "session_minutes",
        "recordings", "recording_minutes"}: book usage; answers that day's totals."""
        account, app = split_app(target)
        day = None if cmd.get("day") is None else str(cmd["day"])
        numbers = {k: float(cmd[k]) for k in USAGE_FIELDS if k in cmd}
        self._sim.usage.add(
            day,
            sessions=int(numbers.get("sessions", 0)),
            session_minutes=numbers.get("session_minutes", 0.0),
            recordings=int(numbers.get("recordings", 0)),
            recording_minutes=numbers.get("recording_minutes", 0.0),
            account_id=account,
            app_id=app,
        )
        return {"usage": self._sim.usage.day(day, account, app)}

    def peers(self, meeting_id: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST /_sim/peers/{meeting_id} {"leave": PEER_ID or true}: the peers now (and gone)."""
        peers = self._sim.peers
        if cmd.get("leave"):
            leave = cmd["leave"]
            peers.leave(meeting_id, None if leave is True else str(leave))
        return {"current": peers.current(meeting_id), "gone": peers.gone(meeting_id)}

    def peer(self, peer_id: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST /_sim/peer/{peer_id} {"quality", "kinds", "delay" (null: never), "broken"}:
        change a left peer's report; answers it as served now (null: a 404 now)."""
        peers = self._sim.peers
        delay = cmd.get("delay")
        peers.set_report(
            peer_id,
            quality=None if cmd.get("quality") is None else str(cmd["quality"]),
            kinds=None if cmd.get("kinds") is None else [str(k) for k in cmd["kinds"]],
            delay=None if "delay" not in cmd else math.inf if delay is None else float(delay),
            broken=None if "broken" not in cmd else bool(cmd["broken"]),
        )
        return {"report": peers.report(peer_id), "kinds": peers.report_kinds(peer_id)}
