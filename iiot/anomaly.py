"""The anomaly message: what the edge, the stream rules and the models raise.

One shape for every producer (gateway thresholds, Flink SQL rules, the failure predictor, the
multivariate anomaly detector) so the alert router, the lake and operators read one format.
JSON on the wire (msgspec).

`score` and `contributors` were added for the anomaly detector; both have defaults, so a
message without them decodes as before, and a consumer that does not know them ignores them
(msgspec and JSON readers skip unknown fields).
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
# VIBRATION_HIGH, <METRIC>_HIGH, RAPID_CHANGE (stream), FAILURE_PREDICTED, MULTIVARIATE_ANOMALY
# (model).
AnomalyType = Annotated[str, msgspec.Meta(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]


class Contributor(msgspec.Struct, frozen=True, kw_only=True):
    """A sensor (metric) and the share of an anomaly's score it carries."""

    metric: MetricName
    share: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class Anomaly(msgspec.Struct, frozen=True, kw_only=True):
    """One detected anomaly. `timestamp` is the event time of the reading(s) that raised it
    (UTC ms); `state` is RAISED when it starts and CLEARED when the condition ends (edge
    hysteresis), so consumers can pair them. `score` is how far the value is beyond its
    threshold, relative (1.0 = at it), and `contributors` the sensors that carried most of it,
    largest first: where an operator should look first."""

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
    score: float | None = None
    contributors: tuple[Contributor, ...] = ()

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
