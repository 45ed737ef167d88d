"""An in-process imitation of the Cloudflare RealtimeKit (formerly Dyte) REST API.

The simulator is a real HTTP server (stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive) that
serves, under ``/client/v4``, the read endpoints the exporter relies on (the session ones are
described here; the others in their modules):

* ``GET /accounts/{account}/realtime/kit/{app}/meetings/{meeting}/active-session`` - the meeting's
  current session in RealtimeKit's ``{"success": true, "data": {...}}`` envelope, or the RealtimeKit
  404 ``{"success": false, "error": {...}}`` when nobody is in the meeting;
* ``GET /accounts/{account}/realtime/kit/{app}/sessions`` - the current sessions of the app's
  meetings, sorted by creation time, filtered by ``status``, ``associated_id`` and ``search`` and
  paged with ``page_no`` and ``per_page`` (default 20, at least 1). ``paging`` carries
  ``total_count`` and the 1-based ``start_offset``/``end_offset`` of the page within the result;
  an empty page (nothing matches, or a page past the end) has ``start_offset = end_offset = 0``.
  Only each meeting's *current* session is known (LIVE, or ENDED until it is cleared): no history.
  The sorted listing is kept per app and updated as sessions come and go, so a page costs the page
  (100,000 LIVE sessions: ``add_app(account, app, 100_000, live=True)`` with ``auto=False``, or
  ``Simulator(meetings=100_000, live=True, auto=False)``; about 1.5 s to make, 2-3 ms a page).
* ``GET …/recordings``, ``…/recordings/active-recording/{meeting}`` (``recordings``: control
  methods on ``Simulator.recordings``); ``GET …/livestreams``,
  ``…/meetings/{meeting}/active-livestream`` (``livestreams``: ``Simulator.livestreams``);
* ``GET …/analytics/daywise`` (``usage``: ``Simulator.usage``); ``GET …/webhooks``
  (``registrations``: ``Simulator.registrations``);
* ``GET …/sessions/peer-report/{peer}`` (``peers``: ``Simulator.peers``).

Every private value served (download URLs, stream keys, IPs' owners, user ids) contains
:data:`SECRET` (``"sim-secret"``), so a test can grep the exporter's output for leaks.

API conventions the published spec leaves open are options (fields of the frozen
:class:`SimOptions`, which ``Simulator(options)`` takes and ``Simulator(**kwargs)`` builds, and
flags of ``python -m exporter.simulator``), so the simulator can disagree with the exporter:

=====================  ==================  =====================================================
option                 default             meaning
=====================  ==================  =====================================================
``page_base``          1                   number of the first page: with 1, page_no 0 is read as
                                           1; with 0, page_no 1 is the *second* page
``per_page_cap``       100                 at most this many items per page, whatever is asked
``paging``             ``"full"``          ``"full"``; ``"partial"``: ``paging`` without the
                                           fields in ``paging_drop`` (default ``total_count``);
                                           ``"absent"``: no ``paging`` object at all
``unknown_meeting``    ``"no_session"``    a meeting id the app does not have answers like an idle
                                           meeting (404 "No active session found for
                                           meeting_id …"); ``"not_found"``: 404 "Meeting not
                                           found" in the same RealtimeKit envelope
``churn_per_page``     0                   after each ``/sessions`` page is built, this many of
                                           the app's LIVE sessions end (and are cleared) and as
                                           many new meetings go LIVE (seeded by ``seed``)
``on_page``            None                called with a ``PageServed`` after each page is built,
                                           before it is sent (no lock held: it may call controls)
=====================  ==================  =====================================================

Errors produced by "Cloudflare's edge" (bad token, rate limit, unknown route or account/app) use
Cloudflare's ``{"success": false, "errors": [...], "messages": [], "result": null}`` shape. With
``rate_limit=(N, W)`` every token gets fixed windows of W seconds starting at its first request;
past N requests the rest of the window answers 429 with ``Retry-After``. ``Ratelimit`` and
``Ratelimit-Policy`` headers are sent on every authenticated answer.

With ``auto=True`` each meeting cycles, in simulated seconds (elapsed clock seconds x ``speed``):
idle (404) for 20-120 s, a LIVE session for 2-10 min whose participant count random-walks between
1 and 12 every 5-15 s, then ENDED (live 0) for about 60 s, then idle again. State is advanced
lazily, from the clock, when a meeting is touched or its next change falls due (a heap of due
times); there is no ticking thread, so a fake ``clock`` makes everything deterministic (and a
``seed`` makes it reproducible). About half of the meetings start LIVE. ``minutes_consumed``
integrates ``live_participants`` over simulated time.

Faults (``FaultConfig`` probabilities, or a forced fault per meeting with ``set_fault`` or per
app's listing with ``set_listing_fault``) imitate what a client meets in the wild - ``FAULT_KINDS``:

* ``500``, ``503`` (502/503 HTML page), ``401``, ``429`` (``Retry-After: 5``), ``timeout`` (the
  answer waits ``slow_seconds``), ``reset`` (RST, no answer), ``non_json``, ``wrong_types``;
* hostile answers: ``trickle`` (a valid body, one byte per ``trickle_seconds``), ``endless`` (a
  chunked body that never ends: a few bytes every ``trickle_seconds`` until ``stop()``),
  ``huge_header`` (an 80 KiB ``Ratelimit`` value), ``gzip_bomb`` (``Content-Encoding: gzip``, 1 GiB
  of zeros in ~1 MB, streamed), ``deep_json`` (``meta`` nested 10,000 deep), ``huge_int``
  (``live_participants`` = 10**400), ``long_name`` (a 900 KiB ``meeting_display_name``),
  ``unknown_status`` (``status`` "PAUSED"), ``retry_after_huge`` (429, ``Retry-After:
  1000000000``) and ``not_found`` (404 "Meeting not found"; meetings only). On a listing the
  field faults change the page's first session. ``stop()`` ends streaming answers at once.

Webhooks (``webhook_url``, ``--webhook-url``): the simulator signs RealtimeKit's camelCase events
with its RSA key (``webhook_key``, ``--webhook-key-file``; by default a new 2048-bit key) and POSTs
them to the URL, where ``{account_id}`` and ``{app_id}`` are replaced by the meeting's app. Its
public key is at ``GET /.well-known/webhooks.json`` (no token), whenever it has a key. Events:

* a session starts (auto mode, ``set_participants`` on an idle or ENDED meeting, a live
  ``add_app``, churn): ``meeting.started``, then one ``meeting.participantJoined`` per participant;
* the live count goes up or down by k: k ``participantJoined`` or k ``participantLeft`` (peer ids
  kept by ``Simulator.peers``; the latest to join leaves first). ``set_participants(id, 0)`` keeps
  the session LIVE;
* a session ends: a ``participantLeft`` for everyone still there, then ``meeting.ended`` with
  ``reason`` ``HOST_ENDED_MEETING`` (``end_session``, ``clear_session`` of a LIVE session) or
  ``ALL_PARTICIPANTS_LEFT`` (auto mode, churn).

* ``recording.statusUpdate`` and ``livestreaming.statusUpdate`` on every status change.

An event goes out only while an enabled registration of its app (``GET /webhooks``) has the URL
and the event; every app gets one with every event when it is created (``register_webhooks``).
The constructor's own meetings send nothing for the sessions they start with. Headers:
``rtk-signature``, ``rtk-uuid`` (one per delivery, kept on its retries), ``rtk-webhook-id`` (one per
simulator: ``webhook_id``). One thread delivers, in order, from a queue of ``webhook_queue_size``
(10,000) events; a full queue drops the event. A 5xx or a network error is retried
``webhook_retries`` (3) times after ``webhook_retry_delays`` (0.2, 0.5, 1 s); other statuses are
final; each POST has ``webhook_timeout`` (2 s). Counts: ``webhook_stats()`` and ``"webhooks"`` in
``GET /_sim/stats``. In auto mode that thread also advances every meeting every 0.2 s, so events
go out while nobody polls. Without ``webhook_url`` there is no thread and nothing changes.

Control endpoints (``POST /_sim/meetings/{id}``, ``POST /_sim/apps/{account}/{app}``,
``GET /_sim/stats``) and ``GET /-/healthy`` need no token. Run standalone with
``python -m exporter.simulator --help``.

Modules, each importing only those above it: ``options`` (SimOptions, FaultConfig), ``answers``
(envelopes, hostile bodies), ``world`` (meetings and sessions in simulated time), ``delivery``
(``sign``, ``well_known_body``, the sender thread), ``events`` (event payloads), ``sessions``
(the session endpoints, paging), ``media`` (what recordings and livestreams share),
``recordings``, ``livestreams``, ``usage``, ``registrations``, ``peers``, ``faults``, ``api``
(routing, token, rate limit), ``control`` (``/_sim/``), ``server`` (HTTP), ``core``
(:class:`Simulator`), ``cli``.
"""

from exporter.simulator.cli import _parser, main
from exporter.simulator.core import Simulator
from exporter.simulator.delivery import sign, well_known_body
from exporter.simulator.media import SECRET
from exporter.simulator.options import (
    FAULT_KINDS,
    WEBHOOK_RETRY_DELAYS,
    FaultConfig,
    PageServed,
    SimOptions,
)

__all__ = [
    "FAULT_KINDS",
    "SECRET",
    "WEBHOOK_RETRY_DELAYS",
    "FaultConfig",
    "PageServed",
    "SimOptions",
    "Simulator",
    "_parser",
    "main",
    "sign",
    "well_known_body",
]
