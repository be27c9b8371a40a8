"""Health: backlog rows and bytes, age of the oldest unsent reading, rates and rejects.

A snapshot is logged and published on the status topic every `health_interval_s`; the same
dictionary is what `SensorBuffer.status()` returns to tests and the demo.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sensor_buffer.store import Store


class HealthTracker:
    """Turns counters into rates between two snapshots."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock
        self._last_time = clock()
        self._last: dict[str, int] = dict(store.counters)

    def snapshot(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        now = self._clock()
        backlog = self.store.backlog()
        counters = backlog.counters
        elapsed = max(now - self._last_time, 1e-9)
        rates = {
            "ingest_readings_per_s": round(
                (counters["readings_committed"] - self._last.get("readings_committed", 0))
                / elapsed,
                1,
            ),
            "upload_readings_per_s": round(
                (counters["readings_uploaded"] - self._last.get("readings_uploaded", 0)) / elapsed,
                1,
            ),
        }
        self._last_time = now
        self._last = dict(counters)
        oldest_age = (
            None
            if backlog.oldest_created_ms is None
            else round(max(0.0, now - backlog.oldest_created_ms / 1000), 3)
        )
        status: dict[str, Any] = {
            "timestamp": int(now * 1000),
            "producer": self.store.producer,
            "backlog_readings": backlog.readings,
            "backlog_bytes": backlog.bytes,
            "disk_cap_bytes": self.store.max_disk_bytes,
            "quarantine_bytes": self.store.quarantine_bytes,
            "quarantine_cap_bytes": self.store.quarantine_max_bytes,
            "database_file_bytes": self.store.file_bytes(),
            "oldest_unsent_age_s": oldest_age,
            "oldest_unsent_event_ms": backlog.oldest_event_ms,
            "outbox_batches": backlog.outbox,
            "anomalies_pending": backlog.anomalies,
            "acked_seq": self.store.acked_seq,
            "next_seq": self.store.next_seq,
            **rates,
            **counters,
        }
        if extra:
            status.update(extra)
        return status
