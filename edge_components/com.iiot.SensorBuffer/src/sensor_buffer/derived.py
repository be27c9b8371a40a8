"""The failure predictor's probability as a derived series: stored and uploaded like a reading.

The FailurePredictor publishes a prediction per machine on the local topic
`factory/<factory>/predictions` every few readings. The buffer subscribes to it and turns each
prediction into one reading of the catalog's derived metric `failure_probability`
(sensor id: the component that derives it, `failure_predictor`; unit `probability`), which then
takes the readings' path: the contract's validation, the same group commit with the payload's
digest (a redelivered prediction is not stored twice), the compact batch upload with retries
while the uplink is down, and in the cloud the lake and InfluxDB. No threshold check runs on it
(a derived metric has no edge limits; the predictor raises its own alerts).

Historian practice bounds the rate: a machine's probability is stored when it moved by at least
`deadband` since the value last stored, when `max_interval_ms` of event time passed since then,
when the predictor's alert state flipped, and always for a machine's first prediction. Every
prediction is still evaluated (and the suppressed ones counted), so a 100-fold stream of
predictions adds a handful of readings per machine and hour, not a second copy of the data.

A prediction that is not one (undecodable, wrong types, a probability that is null, NaN or
outside 0..1) is quarantined whole with the reason, like a bad reading, and does not move the
deadband.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec

from iiot.catalog import Metric
from iiot.contract import Reading

PREDICTIONS_TOPIC = "factory/{factory_id}/predictions"  # failure_predictor.messages.PREDICTIONS
METRIC = "failure_probability"


class _Prediction(msgspec.Struct, frozen=True):
    """The fields of failure_predictor.messages.Prediction the buffer reads (others ignored)."""

    factory_id: str
    machine_id: str
    timestamp: int
    probability: float
    alert: bool = False


_decode = msgspec.json.Decoder(_Prediction).decode
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Converted:
    """One prediction's fate: a reading payload to store, a reject reason, or neither (held
    back by the deadband)."""

    reading: bytes | None = None
    reason: str | None = None


@dataclass(frozen=True)
class _Last:
    timestamp: int
    value: float
    alert: bool


class PredictionSeries:
    """Turns prediction messages into `failure_probability` readings, rate-bounded per machine.

    The deadband state moves only with `commit()`: `process` calls it once the micro-batch is
    durable, and `rollback()` when the commit failed (the broker then redelivers the payloads,
    which must not meet a deadband already moved by them)."""

    def __init__(self, metric: Metric, *, deadband: float, max_interval_ms: int) -> None:
        if metric.derived is None:
            raise ValueError(f"{metric.name} is not a derived metric of the catalog")
        self.metric = metric
        self.component = metric.derived
        self.deadband = deadband
        self.max_interval_ms = max_interval_ms
        self._last: dict[str, _Last] = {}
        self._pending: dict[str, _Last] = {}

    def convert(self, payload: bytes) -> Converted:
        try:
            prediction = _decode(payload)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return Converted(reason=f"prediction: not a prediction message ({exc})")
        p = prediction.probability
        valid = self.metric.valid_range
        if not math.isfinite(p) or not valid.contains(p):
            return Converted(
                reason=(
                    f"value: failure probability {p!r} of {prediction.machine_id!r} is outside "
                    f"[{valid.min:g}, {valid.max:g}] (the catalog's valid_range of {METRIC})"
                )
            )
        machine = prediction.machine_id
        now = _Last(prediction.timestamp, p, prediction.alert)
        last = self._pending.get(machine) or self._last.get(machine)
        if last is not None and not self._due(last, now):
            return Converted()
        self._pending[machine] = now
        reading = Reading(
            timestamp=prediction.timestamp,
            factory_id=prediction.factory_id,
            machine_id=machine,
            # one sensor id per machine, like a sensor's (`<machine>-<metric>`): the lake and
            # the contract identify a reading by (sensor_id, timestamp)
            sensor_id=f"{machine}-{self.component}",
            metric=self.metric.name,
            value=p,
            unit=self.metric.unit,
        )
        return Converted(reading=_encode(reading))

    def _due(self, last: _Last, now: _Last) -> bool:
        return (
            abs(now.value - last.value) >= self.deadband
            or now.timestamp - last.timestamp >= self.max_interval_ms
            or now.alert != last.alert
        )

    def commit(self) -> None:
        self._last.update(self._pending)
        self._pending.clear()

    def rollback(self) -> None:
        self._pending.clear()
