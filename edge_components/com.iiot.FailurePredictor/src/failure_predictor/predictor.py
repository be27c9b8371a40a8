"""The predictor's logic: readings in, per-machine features, predictions, alerts, requests out.

No Greengrass here: readings arrive through `on_payload` / `on_columns`, and everything leaves
through the `publish(topic, payload)` callback that `main.py` wires to a transport.

Per machine the shared feature state (`edge_runtime.features.MachineFeatureState`) is updated
with every valid reading, and so is the multivariate anomaly detector's state
(`edge_runtime.anomaly_detector`, when an AnomalyModel is deployed): a machine whose readings
leave their normal pattern raises a MULTIVARIATE_ANOMALY with its score and the sensors that
contributed most, and clears it once they are back. A prediction runs every
`predict_every_readings` readings or every `predict_every_seconds` of event time. A
FAILURE_PREDICTED anomaly is RAISED at p >= the alert threshold and CLEARED only below the
lower clear threshold (hysteresis, no flapping). The thresholds are the model's own (the one
its training's cross-validation chose, in its manifest; `PredictorConfig.thresholds`) unless
the configuration sets them, and follow a model swap. At p >= the shutdown threshold, and only when
enabled, the predictor publishes a shutdown *request* for an operator; an operator's
confirmation becomes a decision message for the site's control
system. Nothing here calls an actuator.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from edge_runtime.anomaly_detector import AnomalyDetector, AnomalyEvent, AnomalyModelSet
from edge_runtime.features import MachineFeatureState, MachineInfo
from edge_runtime.model_runtime import Model
from failure_predictor.config import AlertThresholds, PredictorConfig
from failure_predictor.messages import (
    PREDICTIONS,
    SHUTDOWN_CONFIRMATIONS,
    SHUTDOWN_DECISIONS,
    SHUTDOWN_REQUESTS,
    Prediction,
    ShutdownDecision,
    ShutdownRequest,
    confirmation_decoder,
    encoder,
    maintenance_decoder,
    topic,
)
from failure_predictor.model_loader import AnomalyModelHandle, ModelHandle
from iiot import topics
from iiot.anomaly import Anomaly, Contributor, encode_anomaly
from iiot.catalog import MetricCatalog
from iiot.contract import ReadingColumns, Validator
from iiot.wire import validate_payload

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]
ANOMALY_METRIC = "failure_probability"
ANOMALY_SCORE_METRIC = "anomaly_score"
MULTIVARIATE_ANOMALY = "MULTIVARIATE_ANOMALY"
SINGLE_SENSOR_SHARE = 0.9


@dataclass
class _Machine:
    state: MachineFeatureState
    since_prediction: int = 0
    last_prediction_ms: int | None = None
    alert: bool = False
    pending_request: ShutdownRequest | None = None


@dataclass
class Counters:
    readings: int = 0
    rejected: int = 0
    predictions: int = 0
    alerts_raised: int = 0
    alerts_cleared: int = 0
    shutdown_requests: int = 0
    decisions: int = 0
    model_swaps: int = 0
    anomalies_raised: int = 0
    anomalies_cleared: int = 0
    anomaly_model_swaps: int = 0
    last_probability: dict[str, float] = field(default_factory=dict)


class FailurePredictor:
    def __init__(
        self,
        config: PredictorConfig,
        model: ModelHandle,
        publish: Publish,
        catalog: MetricCatalog,
        *,
        anomaly_models: AnomalyModelHandle | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.model = model
        self.anomaly_models = anomaly_models
        self.anomalies: AnomalyDetector | None = None
        self.publish = publish
        self.validator = Validator(catalog, clock=clock)
        self.clock = clock
        self.counters = Counters()
        self.machines: dict[str, _Machine] = {}
        self._maintenance: dict[str, list[int]] = {}
        self._spec = model.model.manifest.feature_spec if model.model else None
        self._interval_ms = int(config.predict_every_seconds * 1000)
        self._thresholds_of: tuple[Model, AlertThresholds] | None = None

    @property
    def thresholds(self) -> AlertThresholds | None:
        """The thresholds in force with the current model (None: no model yet)."""
        model = self.model.model
        return self._thresholds_for(model) if model is not None else None

    def _thresholds_for(self, model: Model) -> AlertThresholds:
        cached = self._thresholds_of
        if cached is not None and cached[0] is model:
            return cached[1]
        thresholds, corrected = self.config.thresholds(model.manifest.threshold)
        for problem in corrected:
            log.warning(problem, extra={"model_version": model.manifest.model_version})
        log.info(
            "failure alert thresholds",
            extra={
                "model_version": model.manifest.model_version,
                "model_threshold": model.manifest.threshold,
                "alert": thresholds.alert,
                "clear": thresholds.clear,
                "shutdown": thresholds.shutdown,
                "configured": self.config.alert_threshold is not None,
            },
        )
        self._thresholds_of = (model, thresholds)
        return thresholds

    # ------------------------------------------------------------------------ inputs

    def on_payload(self, payload: bytes) -> None:
        """A readings payload from the local broker: JSON v1 or a compact batch."""
        validated = validate_payload(payload, self.validator)
        self.counters.rejected += len(validated.rejects)
        for reject in validated.rejects[:3]:
            log.warning("reading rejected", extra={"reason": reject.reason})
        self.on_columns(validated.columns)

    def on_columns(self, columns: ReadingColumns) -> None:
        series = columns.series
        for i, t, v in zip(
            columns.series_index.tolist(),
            columns.timestamp.tolist(),
            columns.value.tolist(),
            strict=True,
        ):
            key = series[i]
            self.on_reading(t, key.machine_id, key.metric, v)

    def on_reading(self, timestamp_ms: int, machine_id: str, metric: str, value: float) -> None:
        """One valid reading (already checked against the contract)."""
        models = self.anomaly_models.models if self.anomaly_models is not None else None
        if models is not None:
            detector = self.anomalies
            if detector is None or detector.models is not models:
                detector = self._use_anomaly_models(models)
            event = detector.update(timestamp_ms, machine_id, metric, value)
            if event is not None:
                self._anomaly_event(event)
        machine = self.machines.get(machine_id)
        if machine is None:
            machine = self._new_machine(machine_id)
            if machine is None:
                return
        if not machine.state.update(timestamp_ms, metric, value):
            return
        self.counters.readings += 1
        machine.since_prediction += 1
        due = machine.since_prediction >= self.config.predict_every_readings or (
            machine.last_prediction_ms is not None
            and timestamp_ms - machine.last_prediction_ms >= self._interval_ms
        )
        if machine.last_prediction_ms is None:
            machine.last_prediction_ms = timestamp_ms
        if due:
            self._predict(machine_id, machine, timestamp_ms)

    def on_maintenance(self, payload: bytes) -> None:
        """A maintenance job completed (from the CMMS bridge): resets time-since-maintenance."""
        try:
            done = maintenance_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            log.warning("maintenance message rejected", extra={"error": str(exc)})
            return
        self._maintenance.setdefault(done.machine_id, []).append(done.completed_at_ms)
        machine = self.machines.get(done.machine_id)
        if machine is not None:
            machine.state.add_maintenance(done.completed_at_ms)

    def on_confirmation(self, payload: bytes) -> None:
        """An operator's answer to a shutdown request; published as a decision only if it
        names a pending, unexpired request."""
        try:
            answer = confirmation_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            log.warning("shutdown confirmation rejected", extra={"error": str(exc)})
            return
        for machine_id, machine in self.machines.items():
            request = machine.pending_request
            if request is None or request.request_id != answer.request_id:
                continue
            now_ms = int(self.clock() * 1000)
            status: Literal["CONFIRMED", "REJECTED", "EXPIRED"] = (
                "EXPIRED"
                if now_ms > request.expires_at
                else ("CONFIRMED" if answer.approved else "REJECTED")
            )
            decision = ShutdownDecision(
                request_id=request.request_id,
                factory_id=self.config.factory_id,
                machine_id=machine_id,
                status=status,
                operator=answer.operator,
                timestamp=now_ms,
            )
            machine.pending_request = None
            self.counters.decisions += 1
            self.publish(
                topic(SHUTDOWN_DECISIONS, self.config.factory_id), encoder.encode(decision)
            )
            return
        log.warning("confirmation for an unknown request", extra={"request": answer.request_id})

    def refresh_model(self) -> bool:
        """Swap in an updated FailureModel; feature state is kept when the spec is unchanged."""
        if not self.model.refresh() or self.model.model is None:
            return False
        self.counters.model_swaps += 1
        spec = self.model.model.manifest.feature_spec
        if spec != self._spec:
            log.warning("new model uses other features: rebuilding the feature state")
            self._spec = spec
            self.machines.clear()
        return True

    def refresh_anomaly_model(self) -> bool:
        """Load an updated AnomalyModel (from the poll thread); the readings' thread swaps it
        in at its next reading, so the detector's state is only ever touched there."""
        return self.anomaly_models is not None and self.anomaly_models.refresh()

    # ----------------------------------------------------------------------- internals

    def _use_anomaly_models(self, models: AnomalyModelSet) -> AnomalyDetector:
        if self.anomalies is None:
            self.anomalies = AnomalyDetector(
                models,
                raise_after=self.config.anomaly_raise_after_readings,
                clear_after=self.config.anomaly_clear_after_readings,
            )
            return self.anomalies
        restarted = self.anomalies.swap(models)
        self.counters.anomaly_model_swaps += 1
        for machine_id in restarted:  # their state starts afresh: close the open alarm
            self._publish_anomaly(
                Anomaly(
                    factory_id=self.config.factory_id,
                    machine_id=machine_id,
                    metric=ANOMALY_SCORE_METRIC,
                    anomaly_type=MULTIVARIATE_ANOMALY,
                    severity="WARNING",
                    value=0.0,
                    threshold=None,
                    timestamp=int(self.clock() * 1000),
                    source="model",
                    state="CLEARED",
                    message=f"new anomaly model {models.model_version}: the machine starts afresh",
                )
            )
        return self.anomalies

    def _anomaly_event(self, event: AnomalyEvent) -> None:
        relative = event.relative_score
        if event.state == "RAISED":
            self.counters.anomalies_raised += 1
            where = ", ".join(f"{m} ({share:.0%})" for m, share in event.contributors)
            message = (
                f"readings off their normal pattern: score {relative:.2f}x the machine's limit"
                + (f"; most off: {where}" if where else "")
            )
            if event.contributors and event.contributors[0][1] >= SINGLE_SENSOR_SHARE:
                # one sensor left the others: a stuck, drifting or failing sensor is as likely
                # as the machine itself
                message += f"; check the {event.contributors[0][0]} sensor first"
        else:
            self.counters.anomalies_cleared += 1
            message = f"readings back within their normal pattern ({relative:.2f}x the limit)"
        self._publish_anomaly(
            Anomaly(
                factory_id=self.config.factory_id,
                machine_id=event.machine_id,
                metric=ANOMALY_SCORE_METRIC,
                anomaly_type=MULTIVARIATE_ANOMALY,
                severity="WARNING",
                value=round(event.score, 6),
                threshold=round(event.threshold, 6),
                timestamp=event.timestamp,
                source="model",
                state=event.state,
                message=message,
                score=round(relative, 4),
                contributors=tuple(
                    Contributor(metric=m, share=share) for m, share in event.contributors
                ),
            )
        )

    def _publish_anomaly(self, anomaly: Anomaly) -> None:
        payload = encode_anomaly(anomaly)
        self.publish(topics.LOCAL_ALERTS, payload)
        self.publish(topics.ANOMALIES, payload)

    def _new_machine(self, machine_id: str) -> _Machine | None:
        if self._spec is None:
            self.refresh_model()
            if self._spec is None:
                return None  # no model deployed yet: nothing to predict with
        info = self.config.machines.get(machine_id, MachineInfo(machine_id))
        state = MachineFeatureState(self._spec, info, self._maintenance.get(machine_id, []))
        machine = self.machines[machine_id] = _Machine(state)
        return machine

    def _predict(self, machine_id: str, machine: _Machine, timestamp_ms: int) -> None:
        model = self.model.model
        if model is None:
            return
        machine.since_prediction = 0
        machine.last_prediction_ms = timestamp_ms
        p = model.predict_one(machine.state.vector)
        counters = self.counters
        counters.predictions += 1
        counters.last_probability[machine_id] = p
        cfg = self.config
        version = model.manifest.model_version
        limits = self._thresholds_for(model)
        if not machine.alert and p >= limits.alert:
            machine.alert = True
            counters.alerts_raised += 1
            self._anomaly(machine_id, p, timestamp_ms, "RAISED", limits)
        elif machine.alert and p < limits.clear:
            machine.alert = False
            counters.alerts_cleared += 1
            machine.pending_request = None
            self._anomaly(machine_id, p, timestamp_ms, "CLEARED", limits)
        self.publish(
            topic(PREDICTIONS, cfg.factory_id),
            encoder.encode(
                Prediction(
                    factory_id=cfg.factory_id,
                    machine_id=machine_id,
                    timestamp=timestamp_ms,
                    probability=round(p, 6),
                    model_version=version,
                    backend=model.backend,
                    alert=machine.alert,
                )
            ),
        )
        if cfg.shutdown_requests_enabled and p >= limits.shutdown:
            self._request_shutdown(machine_id, machine, p, timestamp_ms, version, limits)

    def _anomaly(
        self, machine_id: str, p: float, timestamp_ms: int, state: str, limits: AlertThresholds
    ) -> None:
        cfg = self.config
        anomaly = Anomaly(
            factory_id=cfg.factory_id,
            machine_id=machine_id,
            metric=ANOMALY_METRIC,
            anomaly_type="FAILURE_PREDICTED",
            severity="CRITICAL" if p >= limits.shutdown else "WARNING",
            value=round(p, 6),
            threshold=limits.alert if state == "RAISED" else limits.clear,
            timestamp=timestamp_ms,
            source="model",
            state=state,  # type: ignore[arg-type]
            message=f"failure probability {p:.2f} within the model's horizon",
        )
        self._publish_anomaly(anomaly)

    def _request_shutdown(
        self,
        machine_id: str,
        machine: _Machine,
        p: float,
        timestamp_ms: int,
        version: str,
        limits: AlertThresholds,
    ) -> None:
        now_ms = int(self.clock() * 1000)
        pending = machine.pending_request
        if pending is not None and now_ms <= pending.expires_at:
            return  # one open request per machine
        cfg = self.config
        request = ShutdownRequest(
            request_id=uuid.uuid4().hex,
            factory_id=cfg.factory_id,
            machine_id=machine_id,
            timestamp=timestamp_ms,
            probability=round(p, 6),
            model_version=version,
            expires_at=now_ms + int(cfg.shutdown_request_ttl_seconds * 1000),
            confirm_topic=topic(SHUTDOWN_CONFIRMATIONS, cfg.factory_id),
            reason=f"failure probability {p:.3f} >= {limits.shutdown}",
        )
        machine.pending_request = request
        self.counters.shutdown_requests += 1
        self.publish(topic(SHUTDOWN_REQUESTS, cfg.factory_id), encoder.encode(request))
