"""The anomaly message: what the edge, the stream rules and the failure model raise.

One shape for every producer (gateway thresholds, Flink SQL rules, the failure predictor) so the
alert router, the lake and operators read one format. JSON on the wire (msgspec).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import msgspec

from iiot.contract import Identifier, MetricName, TimestampMs

Severity = Literal["INFO", "WARNING", "CRITICAL"]
Source = Literal["edge", "stream", "model"]
SEVERITY_ORDER: dict[str, int] = {"INFO": 0, "WARNING": 1, "CRITICAL": 2}

# anomaly_type values in use: THRESHOLD_HIGH, THRESHOLD_LOW (edge), TEMPERATURE_HIGH,
# VIBRATION_HIGH, <METRIC>_HIGH, RAPID_CHANGE (stream), FAILURE_PREDICTED (model).
AnomalyType = Annotated[str, msgspec.Meta(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]


class Anomaly(msgspec.Struct, frozen=True, kw_only=True):
    """One detected anomaly. `timestamp` is the event time of the reading(s) that raised it
    (UTC ms); `state` is RAISED when it starts and CLEARED when the condition ends (edge
    hysteresis), so consumers can pair them."""

    factory_id: Identifier
    machine_id: Identifier
    metric: MetricName
    anomaly_type: AnomalyType
    severity: Severity
    value: float
    threshold: float | None
    timestamp: TimestampMs
    source: Source
    sensor_id: Identifier | None = None
    state: Literal["RAISED", "CLEARED"] = "RAISED"
    message: str = ""

    @property
    def anomaly_id(self) -> str:
        """Stable id (same anomaly, same id): the idempotency key for consumers."""
        key = "|".join(
            (
                self.source,
                self.factory_id,
                self.machine_id,
                self.metric,
                self.anomaly_type,
                self.state,
                str(self.timestamp),
            )
        )
        return hashlib.sha256(key.encode()).hexdigest()[:32]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Anomaly)
_list_decoder = msgspec.json.Decoder(list[Anomaly])


def encode_anomaly(anomaly: Anomaly) -> bytes:
    return _encoder.encode(anomaly)


def decode_anomaly(payload: bytes) -> Anomaly:
    """Decode one anomaly; raises msgspec.ValidationError/DecodeError naming the bad field."""
    return _decoder.decode(payload)


def decode_anomalies(payload: bytes) -> list[Anomaly]:
    """One anomaly object or a list of them."""
    return (
        _list_decoder.decode(payload)
        if payload.lstrip()[:1] == b"["
        else [_decoder.decode(payload)]
    )
