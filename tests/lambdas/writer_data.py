"""Readings and payloads for the InfluxDB writer tests."""

from __future__ import annotations

import uuid

from iiot.contract import Reading, ReadingColumns
from iiot.wire import encode_batch, encode_json

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
BATCH_ID = uuid.UUID("00000000-0000-4000-8000-000000000042")


def readings(machine: str = "F01-M001", count: int = 10, start_ms: int = T0) -> list[Reading]:
    """`count` readings per metric for temperature and vibration, one per second, with
    integer-valued temperatures (they must stay floats in InfluxDB) and odd milliseconds."""
    out = []
    for i in range(count):
        ts = start_ms + i * 1000 + 7
        out.append(Reading(ts, "F01", machine, f"{machine}-temperature", "temperature",
                           float(60 + i), "degC"))  # fmt: skip
        out.append(Reading(ts, "F01", machine, f"{machine}-vibration", "vibration",
                           round(3.1 + i * 0.01, 2), "mm/s"))  # fmt: skip
    return out


def batch_payload(items: list[Reading], batch_id: uuid.UUID = BATCH_ID) -> bytes:
    return encode_batch(ReadingColumns.from_readings(items), batch_id=batch_id)


def json_payload(items: list[Reading]) -> bytes:
    return encode_json(items)
