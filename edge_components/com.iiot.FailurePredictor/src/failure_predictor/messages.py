"""Messages the predictor publishes and the operator's confirmation it listens to."""

from __future__ import annotations

from typing import Literal

import msgspec

FACTORY_PREFIX = "factory/{factory_id}"
PREDICTIONS = FACTORY_PREFIX + "/predictions"
SHUTDOWN_REQUESTS = FACTORY_PREFIX + "/shutdown/requests"
SHUTDOWN_CONFIRMATIONS = FACTORY_PREFIX + "/shutdown/confirmations"
SHUTDOWN_DECISIONS = FACTORY_PREFIX + "/shutdown/decisions"
MAINTENANCE = FACTORY_PREFIX + "/maintenance"


def topic(template: str, factory_id: str) -> str:
    return template.format(factory_id=factory_id)


class Prediction(msgspec.Struct, frozen=True, kw_only=True):
    factory_id: str
    machine_id: str
    timestamp: int  # event time of the latest reading used (UTC ms)
    probability: float
    model_version: str
    backend: str  # "compiled" or "xgboost"
    alert: bool


class ShutdownRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A *request* for a person to decide on: the predictor never drives an actuator."""

    request_id: str
    factory_id: str
    machine_id: str
    timestamp: int
    probability: float
    model_version: str
    expires_at: int
    confirm_topic: str
    reason: str


class ShutdownConfirmation(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    operator: str
    approved: bool


class ShutdownDecision(msgspec.Struct, frozen=True, kw_only=True):
    """What the site's control system may act on: a request a named operator decided."""

    request_id: str
    factory_id: str
    machine_id: str
    status: Literal["CONFIRMED", "REJECTED", "EXPIRED"]
    operator: str
    timestamp: int


class MaintenanceDone(msgspec.Struct, frozen=True, kw_only=True):
    machine_id: str
    completed_at_ms: int


encoder = msgspec.json.Encoder()
confirmation_decoder = msgspec.json.Decoder(ShutdownConfirmation)
maintenance_decoder = msgspec.json.Decoder(MaintenanceDone)
