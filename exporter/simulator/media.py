"""What recordings and livestreams share: items kept per app in creation order (capped), a heap
of the times their next automatic step falls due, and the fake private values that tests grep
for (every one of them contains :data:`SECRET`)."""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from exporter.simulator.world import AppKey

#: Every private value the simulator serves (download URLs, stream keys, IPs' owners, user ids)
#: contains this, so a test can grep metrics, logs and pages for leaks.
SECRET = "sim-secret"
KEEP_PER_APP = 10_000  # the oldest recordings (livestreams) of an app beyond this are forgotten


class Item(Protocol):
    id: str
    app: AppKey
    due: float  # simulated time of its next automatic step (inf: none)


T = TypeVar("T", bound=Item)


class Shelf(Generic[T]):
    """Items by id and per app in creation order; at most ``keep`` per app (oldest go first).
    Items wait in a heap for their next automatic step (``due``, simulated seconds)."""

    def __init__(self, keep: int = KEEP_PER_APP) -> None:
        self.by_id: dict[str, T] = {}
        self._by_app: dict[AppKey, deque[T]] = {}
        self._keep = keep
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()

    def add(self, item: T) -> None:
        kept = self._by_app.setdefault(item.app, deque())
        kept.append(item)
        self.by_id[item.id] = item
        while len(kept) > self._keep:
            gone = kept.popleft()
            gone.due = math.inf
            del self.by_id[gone.id]

    def of_app(self, app: AppKey) -> list[T]:
        return list(self._by_app.get(app, ()))

    def get(self, item_id: str) -> T:
        item = self.by_id.get(item_id)
        if item is None:
            raise KeyError(f"unknown id {item_id}")
        return item

    def schedule(self, item: T, t: float) -> None:
        item.due = t
        if t < math.inf:
            heapq.heappush(self._heap, (t, next(self._seq), item))

    def due(self, now: float) -> Iterator[tuple[T, float]]:
        """(item, the time its step fell due) for steps due by ``now``, earliest first (each
        once per scheduling; steps scheduled meanwhile for times up to ``now`` come too)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, item = heapq.heappop(heap)
            if item.due == t and item.id in self.by_id:
                item.due = math.inf
                yield item, t


def parse_time(text: str, name: str) -> float:
    """A query's ISO-8601 time as Unix time; ValueError naming the parameter."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name} must be an ISO-8601 time, got {text[:40]!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{name} must carry a time zone, got {text[:40]!r}")
    return parsed.timestamp()


def statuses(values: list[str], known: tuple[str, ...]) -> set[str]:
    """The ``status`` filter: repeated or comma-joined; ValueError for an unknown one."""
    wanted = {s.strip().upper() for v in values for s in v.split(",") if s.strip()}
    if bad := sorted(wanted - set(known)):
        raise ValueError(f"status must be among {list(known)}, got {bad}")
    return wanted


def break_first(items: list[dict[str, Any]], fault: str | None, time_field: str) -> None:
    """Field faults on a listing: ``wrong_types`` makes the first item malformed (id a number,
    its time a number), ``unknown_status`` gives it a status no client knows."""
    if not items:
        return
    if fault == "wrong_types":
        items[0] = {**items[0], "id": 12345, time_field: 1234567890}
    elif fault == "unknown_status":
        items[0] = {**items[0], "status": "ARCHIVED"}
