"""Buffer alerts (BUFFER_FULL, BUFFER_QUARANTINE_FULL) at most once per interval, each counting
everything that happened since the previous one.

The first event of a quiet period alerts at once; later events within the interval are summed
and go out together once the interval has passed (the ingest loop polls `take_due`; `stop`
flushes what is left), so the counts of successive alerts add up to every reading or row
affected, none reported twice and none left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AlertDue:
    """What one alert reports: the count since the previous alert and what caused it."""

    count: int
    causes: tuple[str, ...]
    events: int


@dataclass
class AlertWindow:
    interval_s: float
    clock: Callable[[], float] = time.monotonic
    _count: int = 0
    _events: int = 0
    _causes: set[str] = field(default_factory=set)
    _last_sent: float | None = None

    def add(self, count: int, causes: Iterable[str] = ()) -> None:
        """Record one event affecting `count` readings (or rows)."""
        self._count += count
        self._events += 1
        self._causes.update(causes)

    def take_due(self, *, force: bool = False) -> AlertDue | None:
        """The alert to send now, if any: something happened and the interval since the last
        alert has passed (or `force`, when stopping). Resets the window."""
        if not self._events:
            return None
        now = self.clock()
        if not force and self._last_sent is not None and now - self._last_sent < self.interval_s:
            return None
        due = AlertDue(self._count, tuple(sorted(self._causes)), self._events)
        self._count = self._events = 0
        self._causes = set()
        self._last_sent = now
        return due
