"""The leader's meeting states mirrored in Redis, so that a standby that wins the lease serves
complete values at once.

Key (``P`` is ``key_prefix``)::

    P:state:<shard>    hash "account/app/meeting" → JSON of a MeetingState
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from pydantic import TypeAdapter, ValidationError

from exporter.model import MeetingKey
from exporter.redislink import RedisLink, log
from exporter.store import MeetingState

_STATE: Final = TypeAdapter(MeetingState)


def encode_state(state: MeetingState) -> bytes:
    """A meeting state as compact JSON; fields at their defaults are left out.

    >>> encode_state(MeetingState(up=True))
    b'{"up":true}'
    """
    return _STATE.dump_json(state, exclude_defaults=True)


def decode_state(data: bytes | str) -> MeetingState:
    """The inverse of :func:`encode_state`. Raises ValueError naming what is wrong."""
    try:
        state = _STATE.validate_json(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"invalid meeting state: {problems}") from None
    if len(state.errors) != len(MeetingState().errors):
        raise ValueError(f"invalid meeting state: errors: {len(state.errors)} counts")
    return state


def _field(key: MeetingKey) -> str:
    return f"{key.account_id}/{key.app_id}/{key.meeting_id}"


def _key(field_name: bytes | str) -> MeetingKey:
    text = field_name.decode() if isinstance(field_name, bytes) else field_name
    parts = text.split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"invalid meeting field {field_name!r}")
    return MeetingKey(*parts)


class StateMirror:
    """The leader's meeting states in ``P:state:<shard>``: the leader publishes after each
    change batch, every replica fetches them every few seconds. The key expires ``ttl_ms``
    after the last publish."""

    def __init__(self, link: RedisLink, shard: str, *, ttl_ms: int) -> None:
        self._link = link
        self._key = link.key("state", shard)
        self._ttl_ms = ttl_ms
        self._published: dict[MeetingKey, MeetingState] | None = None

    async def publish(self, states: Mapping[MeetingKey, MeetingState]) -> None:
        """Make the mirror equal ``states`` (only what changed since the last publish is sent;
        everything after a failure). Raises CoordinationError."""
        previous, self._published = self._published, None
        pipe = self._link.redis.pipeline(transaction=True)
        if previous is None:
            pipe.delete(self._key)
            previous = {}
        changed = {
            _field(k): encode_state(v) for k, v in states.items() if previous.get(k) is not v
        }
        gone = [_field(k) for k in previous if k not in states]
        if changed:
            pipe.hset(self._key, mapping=changed)  # type: ignore[arg-type]
        if gone:
            pipe.hdel(self._key, *gone)
        pipe.pexpire(self._key, self._ttl_ms)
        await self._link.call("publish", pipe.execute())
        self._published = dict(states)

    async def fetch(self) -> dict[MeetingKey, MeetingState]:
        """The mirrored states; entries that cannot be read are left out (and logged).
        Raises CoordinationError."""
        raw: dict[bytes | str, bytes | str] = await self._link.call(
            "fetch", self._link.redis.hgetall(self._key)
        )
        states = {}
        for name, value in raw.items():
            try:
                states[_key(name)] = decode_state(value)
            except ValueError as err:
                log.warning("coordination: %s: skipped: %s", self._key, err)
        return states
