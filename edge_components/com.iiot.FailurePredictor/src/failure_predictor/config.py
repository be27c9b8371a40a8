"""The component's configuration, validated: a bad update is rejected with its reasons."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edge_runtime.features import MachineInfo
from iiot import topics

# A MULTIVARIATE_ANOMALY is raised once a machine's alarm held this many rows (a lone spike
# decays within the detector's smoothing: 3 minutes at 10 s sampling; the recipe's
# anomalyRaiseAfterReadings is this value, tests/ml/test_predictor_anomalies.py checks it) and
# cleared once it stayed off this many.
ANOMALY_RAISE_AFTER_READINGS = 18
ANOMALY_CLEAR_AFTER_READINGS = 60


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem."""


# The hysteresis and shutdown rule around an alert threshold t: an alert clears only below
# CLEAR_FRACTION * t, a shutdown request needs max(SHUTDOWN_FLOOR, t).
CLEAR_FRACTION = 0.75
SHUTDOWN_FLOOR = 0.95


@dataclass(frozen=True)
class AlertThresholds:
    """The FAILURE_PREDICTED thresholds a predictor uses with one model."""

    alert: float  # RAISED at p >= alert
    clear: float  # CLEARED only at p < clear (hysteresis)
    shutdown: float  # a shutdown request (when enabled) and CRITICAL severity at p >= shutdown

    @classmethod
    def around(cls, threshold: float) -> AlertThresholds:
        """The rule: alert at `threshold` (the one the training's cross-validation chose, which
        the model's manifest carries), clear at three quarters of it, shutdown at 0.95 or at
        the threshold if that is higher."""
        t = float(threshold)
        return cls(t, round(t * CLEAR_FRACTION, 3), max(SHUTDOWN_FLOOR, t))

    def as_configuration(self) -> dict[str, float]:
        """The recipe keys that pin these thresholds explicitly."""
        return {
            "alertThreshold": self.alert,
            "clearThreshold": self.clear,
            "shutdownThreshold": self.shutdown,
        }


@dataclass(frozen=True)
class PredictorConfig:
    factory_id: str
    model_dir: str
    predict_every_readings: int = 25  # per machine: predict after this many new readings ...
    predict_every_seconds: float = 60.0  # ... or once this much event time has passed
    # Explicit overrides of the FAILURE_PREDICTED thresholds; None (the recipe's default): the
    # deployed model's own threshold, with clear and shutdown derived from the one in force
    # (`thresholds`). A new model version brings its own threshold.
    alert_threshold: float | None = None
    clear_threshold: float | None = None  # hysteresis: the alert clears only below this
    shutdown_threshold: float | None = None
    shutdown_requests_enabled: bool = False  # off unless the site opts in
    shutdown_request_ttl_seconds: float = 900.0
    model_poll_seconds: float = 10.0
    machines: Mapping[str, MachineInfo] = field(default_factory=dict)
    # The IoT Core topic of predicted-failure anomalies; a deployment sets its environment's
    # (the cloud topics carry the environment: iiot-<env> stacks, config/environments.py).
    anomalies_topic: str = topics.ANOMALIES
    # The AnomalyModel component's artifact folder; empty: no multivariate anomaly detection.
    anomaly_model_dir: str = ""
    anomaly_raise_after_readings: int = ANOMALY_RAISE_AFTER_READINGS
    anomaly_clear_after_readings: int = ANOMALY_CLEAR_AFTER_READINGS
    # The anomaly outbox: each anomaly is committed here before it is published to the cloud
    # and deleted on its PUBACK. A relative path is in the component's work folder
    # ($FAILURE_PREDICTOR_WORK_DIR, `{work:path}` on a gateway); with no work folder known,
    # or empty, the outbox is in memory (retries and order, but not across a restart).
    outbox_path: str = ""
    outbox_max_anomalies: int = 10_000  # beyond it the oldest are evicted, counted and logged
    backoff_initial_seconds: float = 1.0  # retry delay while the cloud is unreachable, ...
    backoff_max_seconds: float = 10.0  # ... doubling up to this, full jitter

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> PredictorConfig:
        """From the Greengrass component configuration (camelCase keys, as in recipe.yaml)."""
        problems: list[str] = []

        def number(key: str, default: float, *, low: float, high: float) -> float:
            value = raw.get(key, default)
            try:
                value = float(value)
            except (TypeError, ValueError):
                problems.append(f"{key} must be a number, got {value!r}")
                return default
            if not low <= value <= high:
                problems.append(f"{key} must be within [{low}, {high}], got {value}")
            return value

        factory_id = str(raw.get("factoryId", "")).strip()
        if not factory_id:
            problems.append("factoryId is required")
        model_dir = str(raw.get("modelDir", "")).strip()
        if not model_dir:
            problems.append("modelDir is required (the FailureModel component's artifact path)")
        every = number("predictEveryReadings", 25, low=1, high=1_000_000)
        seconds = number("predictEverySeconds", 60.0, low=0.0, high=86_400.0)

        def optional(key: str) -> float | None:
            if raw.get(key) is None or raw.get(key) == "":
                return None  # not set: derived from the model's threshold
            return number(key, 0.0, low=0.0, high=1.0)

        alert = optional("alertThreshold")
        clear = optional("clearThreshold")
        shutdown = optional("shutdownThreshold")
        ttl = number("shutdownRequestTtlSeconds", 900.0, low=1.0, high=86_400.0)
        poll = number("modelPollSeconds", 10.0, low=0.1, high=86_400.0)
        # Only what is set explicitly is checked here; against a model's threshold at load.
        if clear is not None and alert is not None and clear >= alert:
            problems.append(f"clearThreshold ({clear}) must be below alertThreshold ({alert})")
        if shutdown is not None and alert is not None and shutdown < alert:
            problems.append(f"shutdownThreshold ({shutdown}) must be at least alertThreshold")
        enabled = raw.get("shutdownRequestsEnabled", False)
        if isinstance(enabled, str):
            enabled = enabled.strip().lower() == "true"
        machines: dict[str, MachineInfo] = {}
        for machine_id, info in (raw.get("machines") or {}).items():
            if not isinstance(info, Mapping):
                problems.append(f"machines.{machine_id} must be a mapping with model/installedOn")
                continue
            installed = info.get("installedOn")
            installed_ms = None
            if installed:
                try:
                    day = datetime.fromisoformat(str(installed)).replace(tzinfo=UTC)
                    installed_ms = int(day.timestamp() * 1000)
                except ValueError:
                    problems.append(f"machines.{machine_id}.installedOn is not a date: {installed}")
            machines[str(machine_id)] = MachineInfo(
                str(machine_id), str(info.get("model", "")), installed_ms
            )
        anomalies_topic = str(raw.get("anomaliesTopic", topics.ANOMALIES)).strip()
        if not anomalies_topic or any(c in anomalies_topic for c in "#+"):
            problems.append(f"anomaliesTopic must be a topic name, got {anomalies_topic!r}")
        raise_after = number(
            "anomalyRaiseAfterReadings", ANOMALY_RAISE_AFTER_READINGS, low=1, high=100_000
        )
        clear_after = number(
            "anomalyClearAfterReadings", ANOMALY_CLEAR_AFTER_READINGS, low=1, high=100_000
        )
        anomaly_model_dir = raw.get("anomalyModelDir", "")
        if not isinstance(anomaly_model_dir, str):
            problems.append(f"anomalyModelDir must be a folder path, got {anomaly_model_dir!r}")
            anomaly_model_dir = ""
        outbox_path = raw.get("outboxPath", "")
        if not isinstance(outbox_path, str):
            problems.append(f"outboxPath must be a file path, got {outbox_path!r}")
            outbox_path = ""
        outbox_max = number("outboxMaxAnomalies", 10_000, low=1, high=10_000_000)
        backoff_initial = number("backoffInitialSeconds", 1.0, low=0.01, high=3_600.0)
        backoff_max = number("backoffMaxSeconds", 10.0, low=0.01, high=3_600.0)
        if backoff_max < backoff_initial:
            problems.append(
                f"backoffMaxSeconds ({backoff_max}) must be at least backoffInitialSeconds "
                f"({backoff_initial})"
            )
        if problems:
            raise ConfigError("invalid FailurePredictor configuration: " + "; ".join(problems))
        return cls(
            factory_id=factory_id,
            model_dir=model_dir,
            predict_every_readings=int(every),
            predict_every_seconds=seconds,
            alert_threshold=alert,
            clear_threshold=clear,
            shutdown_threshold=shutdown,
            shutdown_requests_enabled=bool(enabled),
            shutdown_request_ttl_seconds=ttl,
            model_poll_seconds=poll,
            machines=machines,
            anomalies_topic=anomalies_topic,
            anomaly_model_dir=anomaly_model_dir.strip(),
            anomaly_raise_after_readings=int(raise_after),
            anomaly_clear_after_readings=int(clear_after),
            outbox_path=outbox_path.strip(),
            outbox_max_anomalies=int(outbox_max),
            backoff_initial_seconds=backoff_initial,
            backoff_max_seconds=backoff_max,
        )

    def thresholds(self, model_threshold: float) -> tuple[AlertThresholds, list[str]]:
        """The thresholds in force with a model whose manifest carries `model_threshold`, and
        what had to be corrected. The alert threshold is the configuration's when set, else the
        model's; clear and shutdown are the configuration's when set, else derived from that
        alert threshold by `AlertThresholds.around`. An explicit clear or shutdown threshold
        that does not fit the model's alert threshold (clear >= alert, shutdown < alert) is
        replaced by the derived one and reported."""
        derived = AlertThresholds.around(
            self.alert_threshold if self.alert_threshold is not None else model_threshold
        )
        clear = self.clear_threshold if self.clear_threshold is not None else derived.clear
        shutdown = (
            self.shutdown_threshold if self.shutdown_threshold is not None else derived.shutdown
        )
        corrected: list[str] = []
        if clear >= derived.alert:
            corrected.append(
                f"clearThreshold {clear} is not below the alert threshold {derived.alert}: "
                f"clearing below {derived.clear}"
            )
            clear = derived.clear
        if shutdown < derived.alert:
            corrected.append(
                f"shutdownThreshold {shutdown} is below the alert threshold {derived.alert}: "
                f"requesting at {derived.shutdown}"
            )
            shutdown = derived.shutdown
        return AlertThresholds(derived.alert, clear, shutdown), corrected
