"""Which library validates readings fastest? msgspec vs pydantic v2 vs hand-rolled, side by side.

Each candidate does the same work on the same payloads: parse JSON bytes, check every field's
type and the id syntax (through the same cache of ids already seen), then apply the catalog's
rules (known metric, matching unit, finite value in the valid range, timestamp bounds), and
keep the valid readings. Payloads come from the simulator: lists of 100 readings (a gateway's
typical message) and single readings (the case study's one-reading messages). Figures are
readings validated per second on one core, the best of five runs; "parse + types only" rows
isolate what the libraries themselves cost.

    python bench/contract.py [--readings 200000]

The last line is JSON with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import pydantic

from iiot.catalog import load_catalog
from iiot.contract import EARLIEST_TIMESTAMP_MS, ID_PATTERN, Reading, Validator
from iiot.wire import validate_json
from local_platform.simulator import FleetConfig, FleetSimulator

CATALOG = load_catalog()
NOW_MS = int(time.time() * 1000)
LATEST_MS = NOW_MS + 300_000
RANGES = {name: (m.valid_range.min, m.valid_range.max) for name, m in CATALOG.items()}


_ID = re.compile(ID_PATTERN)
_KNOWN_IDS: set[str] = set()


def ids_ok(*ids: str) -> bool:
    """Id syntax, with the cache of known ids that every candidate gets (ids repeat)."""
    for value in ids:
        if value not in _KNOWN_IDS:
            if not _ID.match(value):
                return False
            _KNOWN_IDS.add(value)
    return True


def catalog_problem(metric: str, unit: str, value: float, timestamp: int) -> str | None:
    expected = CATALOG.units.get(metric)
    if expected is None:
        return "metric: unknown"
    if unit != expected:
        return "unit: mismatch"
    if not math.isfinite(value):
        return "value: not finite"
    low, high = RANGES[metric]
    if not low <= value <= high:
        return "value: out of range"
    if not EARLIEST_TIMESTAMP_MS <= timestamp <= LATEST_MS:
        return "timestamp: out of bounds"
    return None


# --- pydantic v2 --------------------------------------------------------------------------
PydanticId = Annotated[str, pydantic.StringConstraints(max_length=128)]


class PydanticReading(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, frozen=True)

    timestamp: Annotated[int, pydantic.Field(ge=0)]
    factory_id: PydanticId
    machine_id: PydanticId
    sensor_id: PydanticId
    metric: Annotated[str, pydantic.StringConstraints(min_length=1, max_length=64)]
    value: float
    unit: Annotated[str, pydantic.StringConstraints(min_length=1, max_length=32)]


_pydantic_list = pydantic.TypeAdapter(list[PydanticReading])


def pydantic_validate(payload: bytes) -> int:
    if payload.lstrip()[:1] == b"[":
        readings = _pydantic_list.validate_json(payload)
    else:
        readings = [PydanticReading.model_validate_json(payload)]
    return sum(
        ids_ok(r.factory_id, r.machine_id, r.sensor_id)
        and catalog_problem(r.metric, r.unit, r.value, r.timestamp) is None
        for r in readings
    )


# --- hand-rolled ---------------------------------------------------------------------------
_FIELDS = (
    ("factory_id", str),
    ("machine_id", str),
    ("sensor_id", str),
    ("metric", str),
    ("unit", str),
)


def hand_rolled_validate(payload: bytes) -> int:
    document = json.loads(payload)
    items = document if isinstance(document, list) else [document]
    valid = 0
    for item in items:
        if not isinstance(item, dict):
            continue
        timestamp, value = item.get("timestamp"), item.get("value")
        if type(timestamp) is not int or timestamp < 0:
            continue
        if type(value) not in (float, int):
            continue
        if not all(isinstance(item.get(name), kind) for name, kind in _FIELDS):
            continue
        if not ids_ok(item["factory_id"], item["machine_id"], item["sensor_id"]):
            continue
        if catalog_problem(item["metric"], item["unit"], float(value), timestamp) is None:
            valid += 1
    return valid


# --- msgspec, bare: the same work as the others ---------------------------------------------
_msgspec_list = msgspec.json.Decoder(list[Reading])
_msgspec_one = msgspec.json.Decoder(Reading)


def msgspec_bare_validate(payload: bytes) -> int:
    if payload.lstrip()[:1] == b"[":
        readings = _msgspec_list.decode(payload)
    else:
        readings = [_msgspec_one.decode(payload)]
    return sum(
        ids_ok(r.factory_id, r.machine_id, r.sensor_id)
        and catalog_problem(r.metric, r.unit, r.value, r.timestamp) is None
        for r in readings
    )


# --- msgspec as the project uses it: iiot.wire.validate_json ----------------------------------
# (adds per-item fallback, reject bookkeeping with raw bytes and payload positions, the
# case study's field spelling and the envelope)
VALIDATOR = Validator(CATALOG)


def msgspec_validate(payload: bytes) -> int:
    return validate_json(payload, VALIDATOR).accepted


CANDIDATES: dict[str, Callable[[bytes], int]] = {
    "msgspec": msgspec_bare_validate,
    "msgspec (iiot.wire)": msgspec_validate,
    "pydantic v2": pydantic_validate,
    "hand-rolled (json + checks)": hand_rolled_validate,
}


def payloads(total: int, per_message: int) -> list[bytes]:
    config = FleetConfig(factories=1, machines_per_factory=20, hours=24, interval_ms=1000, seed=1)
    simulator = FleetSimulator(config, CATALOG)
    readings: list[Any] = []
    for chunk in simulator.chunks():
        readings.extend(chunk.to_readings())
        if len(readings) >= total:
            break
    readings = readings[:total]
    return [
        msgspec.json.encode(readings[i : i + per_message])
        if per_message > 1
        else msgspec.json.encode(readings[i])
        for i in range(0, len(readings), per_message)
    ]


def msgspec_structure(payload: bytes) -> int:
    if payload.lstrip()[:1] == b"[":
        return len(_msgspec_list.decode(payload))
    _msgspec_one.decode(payload)
    return 1


def pydantic_structure(payload: bytes) -> int:
    if payload.lstrip()[:1] == b"[":
        return len(_pydantic_list.validate_json(payload))
    PydanticReading.model_validate_json(payload)
    return 1


def hand_rolled_structure(payload: bytes) -> int:
    document = json.loads(payload)
    items = document if isinstance(document, list) else [document]
    return sum(
        isinstance(item, dict)
        and type(item.get("timestamp")) is int
        and type(item.get("value")) in (float, int)
        and all(isinstance(item.get(name), kind) for name, kind in _FIELDS)
        and all(len(item[name]) <= 128 for name in ("factory_id", "machine_id", "sensor_id"))
        for item in items
    )


STRUCTURE_ONLY: dict[str, Callable[[bytes], int]] = {
    "msgspec": msgspec_structure,
    "pydantic v2": pydantic_structure,
    "hand-rolled (json + checks)": hand_rolled_structure,
}


def measure(function: Callable[[bytes], int], messages: list[bytes], expected: int) -> float:
    best = math.inf
    for _ in range(5):
        began = time.perf_counter()
        valid = sum(function(message) for message in messages)
        best = min(best, time.perf_counter() - began)
        if valid != expected:
            raise AssertionError(f"{function.__name__} accepted {valid}, expected {expected}")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=200_000)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    for label, per_message in (("lists of 100", 100), ("single readings", 1)):
        messages = payloads(args.readings if per_message > 1 else args.readings // 5, per_message)
        total = sum(msgspec_validate(m) for m in messages)
        count = sum(len(json.loads(m)) if per_message > 1 else 1 for m in messages)
        print(
            f"{label}: {len(messages)} payloads, {count} readings ({total} valid)", file=sys.stderr
        )
        for name, function in CANDIDATES.items():
            seconds = measure(function, messages, total)
            rate = count / seconds
            results.setdefault(name, {})[label] = rate
            print(
                f"  {name:30s} {rate:>12,.0f} readings/s   (parse + types + catalog rules)",
                file=sys.stderr,
            )
        for name, function in STRUCTURE_ONLY.items():
            seconds = measure(function, messages, count)
            rate = count / seconds
            results.setdefault(f"{name} structure", {})[label] = rate
            print(f"  {name:30s} {rate:>12,.0f} readings/s   (parse + types only)", file=sys.stderr)
    summary = {
        "msgspec_bare_list_readings_per_s": round(results["msgspec"]["lists of 100"]),
        "msgspec_bare_single_readings_per_s": round(results["msgspec"]["single readings"]),
        "msgspec_list_readings_per_s": round(results["msgspec (iiot.wire)"]["lists of 100"]),
        "pydantic_list_readings_per_s": round(results["pydantic v2"]["lists of 100"]),
        "hand_rolled_list_readings_per_s": round(
            results["hand-rolled (json + checks)"]["lists of 100"]
        ),
        "msgspec_single_readings_per_s": round(results["msgspec (iiot.wire)"]["single readings"]),
        "pydantic_single_readings_per_s": round(results["pydantic v2"]["single readings"]),
        "hand_rolled_single_readings_per_s": round(
            results["hand-rolled (json + checks)"]["single readings"]
        ),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
