"""One OPC UA data change -> one reading of the contract, or the reason it is refused.

A value is refused when the PLC says it is not good (its StatusCode: a sensor failure, a
device out of service, a value the PLC is unsure of), when it is not a number (a string, a
boolean, an array), or when the reading breaks the contract (`iiot.contract.Validator`: outside
the metric's physically valid range, NaN or infinite, a timestamp before 2000 or beyond the
allowed clock skew). Numbers are scaled (`raw * scale + offset`) and rounded to the metric's
resolution first.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from iiot.contract import Reading, Validator
from opcua_collector.config import NodeMapping, Timestamps


def _milliseconds(moment: datetime) -> int:
    if moment.tzinfo is None:  # asyncua's DateTime is UTC
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def timestamp_ms(data: ua.DataValue, timestamps: Timestamps, received_ms: int) -> int:
    """The reading's time: the PLC's source timestamp, else the server's, else the gateway's
    reception time (`timestamps` says which to prefer)."""
    if timestamps == "source" and data.SourceTimestamp is not None:
        return _milliseconds(data.SourceTimestamp)
    if timestamps in ("source", "server") and data.ServerTimestamp is not None:
        return _milliseconds(data.ServerTimestamp)
    return received_ms


def _number(variant: Any) -> tuple[float | None, str]:
    """(value, "") for a numeric scalar, else (None, what it is)."""
    if not isinstance(variant, ua.Variant):
        return None, "no value"
    value = variant.Value
    kind = variant.VariantType.name if variant.VariantType is not None else type(value).__name__
    if value is None:
        return None, f"an empty {kind}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        shown = repr(value)
        return None, f"a {kind} ({shown[:40]}{'...' if len(shown) > 40 else ''})"
    return float(value), kind


def to_reading(
    node: NodeMapping,
    data: ua.DataValue,
    *,
    factory_id: str,
    timestamps: Timestamps,
    received_ms: int,
    validator: Validator,
) -> Reading | str:
    """The reading for `node`'s new value, or the reason it is refused."""
    status = data.StatusCode
    if status is not None and not status.is_good():
        return f"status: the PLC marks the value {status.name} (not Good)"
    raw, kind = _number(data.Value)
    if raw is None:
        return f"value: {kind} is not a number ({node.metric} needs one)"
    value = raw * node.scale + node.offset
    if math.isfinite(value):
        value = round(value, node.decimals)
    reading = Reading(
        timestamp=timestamp_ms(data, timestamps, received_ms),
        factory_id=factory_id,
        machine_id=node.machine_id,
        sensor_id=node.sensor_id,
        metric=node.metric,
        value=value,
        unit=node.unit,
    )
    problem = validator.problem(reading)
    return reading if problem is None else problem
