"""Horizontal sharding, the kube-state-metrics way: which work and which part of each token's
budget belong to one of M replicas that all read the same config.

A *unit* of work belongs to exactly one shard, by Lamping & Veach's jump consistent hash of a
stable key (so going from M to M+1 shards moves about 1/(M+1) of the units, and nothing else):

- a listed meeting of a plain app (``discover`` off): ``account_id/app_id/meeting_id``;
- a discovering app, its listing and all its meetings (listed ones included): ``account_id/app_id``.

    >>> jump_hash("023e105f/6f0a8a2c/6bf2b8be", 3) in (0, 1, 2)
    True
    >>> resolve_shard(None, 3, "realtimekit-exporter-2")
    2

Each token's request budget (``api.rate_limit.requests`` per ``period_seconds``) is split among
the shards that use it, in proportion to their demand on it, in whole requests: every shard
computes the same split from the config alone, the parts add up to the budget, and each shard's
own limiter keeps it inside its part, so the shards together stay inside the budget with no
coordination. Apply it with :func:`shard_rate_limits`.

Everything here is pure: no I/O, no environment, no clock.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from exporter.config import App, Config, Meeting, RateLimit, TokenRef
from exporter.errors import ConfigError
from exporter.model import MeetingKey, TokenSource, meeting_path

_MASK64: Final = (1 << 64) - 1
_JUMP_MULTIPLIER: Final = 2862933555777941757
_ORDINAL: Final = re.compile(r".+-(0|[1-9][0-9]*)")


def stable_hash64(key: str) -> int:
    """A 64-bit hash of ``key`` that is the same in every process (unlike the salted ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def jump_bucket(key: int, buckets: int) -> int:
    """Lamping & Veach's jump consistent hash ("A Fast, Minimal Memory, Consistent Hash
    Algorithm", 2014): the bucket in ``0 … buckets-1`` of a 64-bit ``key``. Going from ``n`` to
    ``n+1`` buckets moves a key only to the new bucket, and only with probability 1/(n+1)."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    k, b, j = key & _MASK64, -1, 0
    while j < buckets:
        b = j
        k = (k * _JUMP_MULTIPLIER + 1) & _MASK64
        j = int((b + 1) * (float(1 << 31) / float((k >> 33) + 1)))
    return b


def jump_hash(key: str, buckets: int) -> int:
    """:func:`jump_bucket` of :func:`stable_hash64` of a string key."""
    return jump_bucket(stable_hash64(key), buckets)


def ordinal_from_pod(name: str) -> int:
    """The ordinal of a StatefulSet pod from its name: ``realtimekit-exporter-2`` → 2."""
    match = _ORDINAL.fullmatch(name)
    if match is None:
        raise ValueError(
            f"pod name {name!r} does not end in -<ordinal> "
            "(a StatefulSet pod's name, such as realtimekit-exporter-0)"
        )
    return int(match.group(1))


def resolve_shard(shard: int | None, total: int, pod: str | None) -> int:
    """This replica's shard from the flags: ``--shard`` when given, else (with ``--total-shards``
    above 1) the ordinal of ``pod`` — the caller passes ``--pod``, or else ``$POD_NAME``, or
    None. Raises :class:`ConfigError` naming the flag that is missing or out of range."""
    if total < 1:
        raise ConfigError([f"--total-shards: must be at least 1, got {total}"])
    if shard is None and total == 1:
        return 0
    if shard is not None:
        where, ordinal = "--shard", shard
    elif pod is None:
        raise ConfigError(
            [
                f"--shard: --total-shards={total} needs --shard N, or --pod NAME "
                "(or the POD_NAME environment variable) naming a pod that ends in -<ordinal>"
            ]
        )
    else:
        try:
            where, ordinal = "--pod", ordinal_from_pod(pod)
        except ValueError as err:
            raise ConfigError([f"--pod: {err}"]) from None
    if not 0 <= ordinal < total:
        raise ConfigError(
            [f"{where}: shard {ordinal} is out of range for --total-shards={total} (0…{total - 1})"]
        )
    return ordinal


# -- units of work ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unit:
    """One unit of work: a listed meeting of a plain app, or a whole discovering app."""

    key: str  # what the hash sees
    app: App
    meeting: Meeting | None  # None for a discovering app
    token: TokenSource
    demand: int  # requests per poll interval (an estimate for a discovering app)


def app_demand(app: App) -> int:
    """Requests per poll interval the app costs when it is one unit (discovering).

    A discovering app is charged its worst case: a full listing of ``max_meetings`` plus the
    listed meetings, ``ceil((max_meetings + listed) / per_page)`` pages (the poller's page cap),
    plus one confirmation call per listed meeting. A plain app's meeting costs 1 each."""
    listed = len(app.meetings)
    if not app.discover.enabled:
        return listed
    return math.ceil((app.discover.max_meetings + listed) / app.discover.per_page) + listed


def units(config: Config) -> list[Unit]:
    """Every unit of work of the config, in config order."""
    out: list[Unit] = []
    for app in config.apps:
        token = config.token_ref(app).source
        base = f"{app.account_id}/{app.app_id}"
        if app.discover.enabled:
            out.append(Unit(base, app, None, token, app_demand(app)))
        else:
            out.extend(
                Unit(meeting_path(MeetingKey(*app.key, m.id)), app, m, token, 1)
                for m in app.meetings
            )
    return out


def _check(shard: int, total: int) -> None:
    if total < 1 or not 0 <= shard < total:
        raise ValueError(f"shard {shard} is not in 0…{total - 1}")


def owner(unit: Unit, total: int) -> int:
    """The shard a unit belongs to."""
    return jump_hash(unit.key, total)


def assign(config: Config, total: int) -> dict[int, list[Unit]]:
    """The units of each shard ``0 … total-1`` (every shard present, possibly with none)."""
    _check(0, total)
    out: dict[int, list[Unit]] = {s: [] for s in range(total)}
    for unit in units(config):
        out[owner(unit, total)].append(unit)
    return out


def filter_config(config: Config, shard: int, total: int) -> Config | None:
    """The config shard ``shard`` of ``total`` runs: each plain app with only its meetings that
    hash to this shard, each discovering app whole or not at all; apps left with nothing to do
    are dropped. ``None`` when this shard has no work at all: a valid state (more shards than
    units), in which the replica should serve its own metrics and poll nothing.

    Note: :meth:`Config.token_ref` names an app by its index (``apps[3]``) in *this* config, so
    read tokens (and report their problems) from the unfiltered config."""
    _check(shard, total)
    if total == 1:
        return config
    mine: dict[int, list[Unit]] = defaultdict(list)  # by id() of the App
    for unit in units(config):
        if owner(unit, total) == shard:
            mine[id(unit.app)].append(unit)
    kept: list[App] = []
    for app in config.apps:
        own = mine.get(id(app))
        if not own:
            continue
        if app.discover.enabled:
            kept.append(app)
        else:
            meetings = [u.meeting for u in own if u.meeting is not None]
            kept.append(app.model_copy(update={"meetings": meetings}))
    return config.model_copy(update={"apps": kept}) if kept else None


# -- the budget ------------------------------------------------------------------------------------


def _demand(config: Config, total: int) -> dict[TokenSource, dict[int, int]]:
    """Requests per interval of each shard on each token, for the shards that use the token."""
    out: dict[TokenSource, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for shard, own in assign(config, total).items():
        for unit in own:
            out[unit.token][shard] += unit.demand
    return {token: dict(per_shard) for token, per_shard in out.items()}


def apportion(amount: int, weights: dict[int, int]) -> dict[int, int]:
    """Split ``amount`` whole parts among keys with positive ``weights``: one part each, the rest
    in proportion to weight by largest remainder (ties to the smaller key). Exact: the parts add
    up to ``amount``. ValueError when there are fewer parts than keys."""
    if amount < len(weights):
        raise ValueError(f"cannot give {len(weights)} shares of at least 1 out of {amount}")
    rest, weight = amount - len(weights), sum(weights.values())
    parts = {k: 1 + rest * w // weight for k, w in weights.items()}
    by_remainder = sorted(weights, key=lambda k: (-(rest * weights[k] % weight), k))
    for k in by_remainder[: amount - sum(parts.values())]:
        parts[k] += 1
    return parts


def token_name(token: TokenSource) -> str:
    """How a token is named to an operator: ``$ENV_VAR`` or the file path (never the token)."""
    return str(TokenRef(*token, key=""))


def request_split(config: Config, total: int) -> dict[tuple[TokenSource, int], int]:
    """Whole requests per ``api.rate_limit.period_seconds`` of each (token, shard) that uses the
    token, in proportion to the shard's demand on it; the parts of a token add up to its budget.
    Raises :class:`ConfigError` when a budget has fewer requests than shards using the token."""
    budget = config.api.rate_limit.requests
    out: dict[tuple[TokenSource, int], int] = {}
    for token, demand in _demand(config, total).items():
        if budget < len(demand):
            raise ConfigError(
                [
                    f"api.rate_limit.requests: {budget} cannot be split among the {len(demand)} "
                    f"shards that use token {token_name(token)} (each needs at least 1): "
                    "raise it or lower --total-shards"
                ]
            )
        out.update(((token, s), n) for s, n in apportion(budget, demand).items())
    return out


def shard_rate_limits(config: Config, shard: int, total: int) -> dict[TokenSource, RateLimit]:
    """The budget of each token this shard uses, to give its limiter instead of
    ``config.api.rate_limit``: ``limits[config.token_ref(app).source]`` (the source is the same in
    the filtered and unfiltered config). Same period and reserve, this shard's whole requests.
    With ``total`` 1 it is the configured budget for every token."""
    _check(shard, total)
    limit = config.api.rate_limit
    return {
        token: limit.model_copy(update={"requests": n})
        for (token, s), n in request_split(config, total).items()
        if s == shard
    }


# -- what --config.check prints --------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _describe_units(own: Iterable[Unit]) -> str:
    own = tuple(own)
    meetings = [u for u in own if u.meeting is not None]
    apps = sorted({u.app.key for u in meetings})
    discovering = [u.key for u in own if u.meeting is None]
    parts = []
    if meetings:
        parts.append(f"{_plural(len(meetings), 'meeting')} of {_plural(len(apps), 'plain app')}")
    if discovering:
        parts.append(f"{_plural(len(discovering), 'discovering app')} ({', '.join(discovering)})")
    return "; ".join(parts) or "no work (serves only its own metrics)"


def describe_split(config: Config, total: int) -> str:
    """How the work and each token's budget split across ``total`` shards, one block per shard
    (what ``--config.check --total-shards M`` prints)::

        3 shards, 104 units (103 listed meetings, 1 discovering app); fullest shard: 1.18 × the mean
        shard 0: 34 meetings of 2 plain apps
          token $CLOUDFLARE_API_TOKEN: 264 of 1200 requests per 300s (22.0 %), demand 33 per 30s
          token $T2: 400 of 1200 requests per 300s (33.3 %), demand 1 per 30s
        shard 1: 28 meetings of 2 plain apps; 1 discovering app (a/d)
        …
    """
    assigned = assign(config, total)
    split = request_split(config, total)
    demand = _demand(config, total)
    everything = [u for own in assigned.values() for u in own]
    listed = sum(1 for u in everything if u.meeting is not None)
    mean = len(everything) / total
    spread = max(len(own) for own in assigned.values()) / mean if mean else 1.0
    limit, interval = config.api.rate_limit, config.poll.interval_seconds
    lines = [
        f"{_plural(total, 'shard')}, {_plural(len(everything), 'unit')} "
        f"({_plural(listed, 'listed meeting')}, "
        f"{_plural(len(everything) - listed, 'discovering app')}); "
        f"fullest shard: {spread:.2f} × the mean"
    ]
    for shard, own in assigned.items():
        lines.append(f"shard {shard}: {_describe_units(own)}")
        for token in sorted(demand, key=token_name):
            if (token, shard) in split:
                n = split[token, shard]
                lines.append(
                    f"  token {token_name(token)}: {n} of {limit.requests} requests per "
                    f"{limit.period_seconds:g}s ({100 * n / limit.requests:.1f} %), "
                    f"demand {demand[token][shard]} per {interval:g}s"
                )
    return "\n".join(lines)
