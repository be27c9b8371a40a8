"""SensorBuffer settings: typed, validated, built from the Greengrass component configuration.

The recipe's DefaultConfiguration is rendered by `default_configuration()` from these defaults
and the metric catalog (tests/edge check that the committed recipe.yaml matches), so an
operator edits thresholds in one place: config/metrics.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from iiot import topics
from iiot.catalog import EdgeThresholds, MetricCatalog
from iiot.wire import DEFAULT_LIMITS, Limits
from sensor_buffer.derived import PREDICTIONS_TOPIC

FullPolicy = Literal["reject_new", "drop_oldest", "downsample_oldest"]
FULL_POLICIES: tuple[str, ...] = ("reject_new", "drop_oldest", "downsample_oldest")
STATUS_TOPIC = "factory/{factory_id}/gateway/status"

# AWS IoT Core limits per device connection: 128 KiB per message, about 100 publishes/s and
# 512 KiB/s. The defaults stay below them with room for anomalies and status messages.
IOT_CORE_MAX_MESSAGE_BYTES = 128 * 1024
# A quarantined payload keeps up to 64 KiB of its bytes: a cap below 1 MiB holds too few.
MIN_QUARANTINE_BYTES = 1024 * 1024


class ConfigError(ValueError):
    """The component configuration is invalid; the message names the key and the problem."""


@dataclass(frozen=True, kw_only=True)
class BufferConfig:
    """Everything the component can be told. Sizes in bytes, times in milliseconds/seconds."""

    factory_id: str
    data_dir: Path
    gateway_id: str = "gateway"
    # Topics
    input_topics: tuple[str, ...] = ()  # default: factory/{factory_id}/readings
    local_alerts_topic: str = topics.LOCAL_ALERTS
    upload_topic: str = topics.SENSOR_DATA
    anomalies_topic: str = topics.ANOMALIES
    status_topic: str = ""  # default: factory/{factory_id}/gateway/status
    # The failure predictor's probabilities as the derived series failure_probability
    # (sensor_buffer.derived): stored when they moved by the deadband or the interval passed
    store_predictions: bool = True
    predictions_topic: str = ""  # default: factory/{factory_id}/predictions
    prediction_deadband: float = 0.01
    prediction_max_interval_s: float = 300.0
    # Group commit
    commit_interval_ms: float = 5.0
    commit_max_readings: int = 5_000
    synchronous: Literal["NORMAL", "FULL"] = "FULL"
    # Retention and disk cap
    retention_days: float = 7.0
    max_disk_bytes: int = 8 * 1024**3
    full_policy: FullPolicy = "drop_oldest"
    downsample_factor: int = 10
    # Input limits (iiot.wire.Limits): a payload beyond any of them is quarantined whole
    input_max_payload_bytes: int = DEFAULT_LIMITS.max_payload_bytes
    input_max_items: int = DEFAULT_LIMITS.max_items
    input_max_depth: int = DEFAULT_LIMITS.max_depth
    input_max_batch_readings: int = DEFAULT_LIMITS.max_batch_readings
    input_max_decompressed_bytes: int = DEFAULT_LIMITS.max_decompressed_bytes
    # Quarantine: its own cap, oldest rows evicted (counted and alerted) beyond it
    quarantine_max_bytes: int = 64 * 1024**2
    # Upload
    batch_max_readings: int = 20_000
    batch_max_bytes: int = 120 * 1024
    batch_linger_ms: float = 1_000.0
    max_publishes_per_s: float = 80.0
    max_bytes_per_s: float = 400 * 1024
    max_in_flight: int = 4
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 30.0
    compression_level: int = 3
    # Health
    health_interval_s: float = 30.0
    # Thresholds per metric (default: the catalog's edge thresholds)
    thresholds: Mapping[str, EdgeThresholds] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def readings_topics(self) -> tuple[str, ...]:
        return self.input_topics or (topics.readings_topic(self.factory_id),)

    @property
    def predictions(self) -> str:
        """The predictions topic the buffer stores from; empty when it stores none."""
        if not self.store_predictions:
            return ""
        return self.predictions_topic or PREDICTIONS_TOPIC.format(factory_id=self.factory_id)

    @property
    def topics_in(self) -> tuple[str, ...]:
        """Every topic the buffer subscribes to: the readings, and the predictions."""
        return self.readings_topics + ((self.predictions,) if self.predictions else ())

    @property
    def status(self) -> str:
        return self.status_topic or STATUS_TOPIC.format(factory_id=self.factory_id)

    @property
    def limits(self) -> Limits:
        """What one input payload may cost, for the core's integrity checks."""
        return Limits(
            max_payload_bytes=self.input_max_payload_bytes,
            max_items=self.input_max_items,
            max_depth=self.input_max_depth,
            max_batch_readings=self.input_max_batch_readings,
            max_decompressed_bytes=self.input_max_decompressed_bytes,
        )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "sensor_buffer.sqlite3"

    def with_catalog(self, catalog: MetricCatalog) -> BufferConfig:
        """Fill thresholds from the catalog for every measured metric the configuration leaves
        out (a derived series, such as the predictor's probability, has none)."""
        merged = {name: metric.edge for name, metric in catalog.measured.items()}
        merged.update(self.thresholds)
        return replace(self, thresholds=merged)


def _problems(config: BufferConfig) -> list[str]:
    problems = []
    if not config.factory_id:
        problems.append("factory_id: must not be empty")
    if config.full_policy not in FULL_POLICIES:
        problems.append(
            f"full_policy: {config.full_policy!r} is not one of {', '.join(FULL_POLICIES)}"
        )
    if config.synchronous not in ("NORMAL", "FULL"):
        problems.append(f"synchronous: {config.synchronous!r} must be NORMAL or FULL")
    positive = (
        "commit_interval_ms",
        "commit_max_readings",
        "retention_days",
        "max_disk_bytes",
        "batch_max_readings",
        "batch_max_bytes",
        "max_publishes_per_s",
        "max_bytes_per_s",
        "max_in_flight",
        "backoff_initial_s",
        "backoff_max_s",
        "health_interval_s",
        "prediction_max_interval_s",
    )
    problems.extend(
        f"{name}: must be positive, got {getattr(config, name)}"
        for name in positive
        if not getattr(config, name) > 0
    )
    if config.batch_max_bytes > IOT_CORE_MAX_MESSAGE_BYTES:
        problems.append(
            f"batch_max_bytes: {config.batch_max_bytes} exceeds IoT Core's "
            f"{IOT_CORE_MAX_MESSAGE_BYTES}-byte message limit"
        )
    try:
        config.limits  # noqa: B018 - Limits validates each value
    except ValueError as exc:  # names the Limits field: max_items -> input_max_items
        problems.append(f"input_{exc}")
    if config.input_max_depth < 3:
        problems.append(
            f"input_max_depth: must be at least 3 (a reading envelope needs 3), got "
            f"{config.input_max_depth}"
        )
    if config.quarantine_max_bytes < MIN_QUARANTINE_BYTES:
        problems.append(
            f"quarantine_max_bytes: must be at least {MIN_QUARANTINE_BYTES} (a quarantined "
            f"payload keeps up to 64 KiB), got {config.quarantine_max_bytes}"
        )
    if config.downsample_factor < 2:
        problems.append(f"downsample_factor: must be at least 2, got {config.downsample_factor}")
    if not 0 <= config.prediction_deadband < 1:
        problems.append(
            "prediction_deadband: a probability change in [0, 1) (0 stores every prediction), "
            f"got {config.prediction_deadband}"
        )
    if not isinstance(config.store_predictions, bool):
        problems.append(
            f"store_predictions: expected true or false, got {config.store_predictions!r}"
        )
    if config.predictions and config.predictions in config.readings_topics:
        problems.append(f"predictions_topic: {config.predictions!r} is also a readings topic")
    if config.batch_max_readings < config.commit_max_readings:
        problems.append("batch_max_readings: must be at least commit_max_readings")
    for name, edge in config.thresholds.items():
        if edge.min is None and edge.max is None:
            problems.append(f"thresholds.{name}: needs at least one of min or max")
        if edge.debounce < 1 or edge.hysteresis < 0:
            problems.append(f"thresholds.{name}: debounce >= 1 and hysteresis >= 0 required")
    return problems


# Keys of the component configuration (camelCase, as Greengrass recipes use) -> field names.
_KEYS = {
    "factoryId": "factory_id",
    "gatewayId": "gateway_id",
    "dataDir": "data_dir",
    "inputTopics": "input_topics",
    "localAlertsTopic": "local_alerts_topic",
    "uploadTopic": "upload_topic",
    "anomaliesTopic": "anomalies_topic",
    "statusTopic": "status_topic",
    "storePredictions": "store_predictions",
    "predictionsTopic": "predictions_topic",
    "predictionDeadband": "prediction_deadband",
    "predictionMaxIntervalSeconds": "prediction_max_interval_s",
    "commitIntervalMs": "commit_interval_ms",
    "commitMaxReadings": "commit_max_readings",
    "synchronous": "synchronous",
    "retentionDays": "retention_days",
    "maxDiskBytes": "max_disk_bytes",
    "fullPolicy": "full_policy",
    "downsampleFactor": "downsample_factor",
    "inputMaxPayloadBytes": "input_max_payload_bytes",
    "inputMaxItems": "input_max_items",
    "inputMaxDepth": "input_max_depth",
    "inputMaxBatchReadings": "input_max_batch_readings",
    "inputMaxDecompressedBytes": "input_max_decompressed_bytes",
    "quarantineMaxBytes": "quarantine_max_bytes",
    "batchMaxReadings": "batch_max_readings",
    "batchMaxBytes": "batch_max_bytes",
    "batchLingerMs": "batch_linger_ms",
    "maxPublishesPerSecond": "max_publishes_per_s",
    "maxBytesPerSecond": "max_bytes_per_s",
    "maxInFlight": "max_in_flight",
    "backoffInitialSeconds": "backoff_initial_s",
    "backoffMaxSeconds": "backoff_max_s",
    "compressionLevel": "compression_level",
    "healthIntervalSeconds": "health_interval_s",
    "thresholds": "thresholds",
}
_FIELD_TYPES = {f.name: f.type for f in fields(BufferConfig)}
_INTEGER_LIMITS = (
    "input_max_payload_bytes",
    "input_max_items",
    "input_max_depth",
    "input_max_batch_readings",
    "input_max_decompressed_bytes",
    "quarantine_max_bytes",
)


def from_component_config(
    raw: Mapping[str, Any], *, catalog: MetricCatalog, **overrides: Any
) -> BufferConfig:
    """Build and validate the configuration from the component configuration (a JSON object).

    Unknown keys are refused (a typo must not silently fall back to a default); `overrides`
    (e.g. `data_dir` from the Greengrass work path) win over the document.
    """
    values: dict[str, Any] = {}
    unknown = sorted(set(raw) - set(_KEYS) - {"accessControl"})
    if unknown:
        raise ConfigError(
            f"unknown configuration keys {unknown}; known keys: {', '.join(sorted(_KEYS))}"
        )
    for key, name in _KEYS.items():
        if key in raw:
            values[name] = raw[key]
    values.update(overrides)
    try:
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        if "input_topics" in values:
            values["input_topics"] = tuple(values["input_topics"])
        if "thresholds" in values:
            values["thresholds"] = {
                name: EdgeThresholds(**spec) for name, spec in dict(values["thresholds"]).items()
            }
        for name in ("commit_max_readings", "max_disk_bytes", "downsample_factor"):
            if name in values:
                values[name] = _integer(name, values[name])
        for name in (
            "batch_max_readings",
            "batch_max_bytes",
            "max_in_flight",
            *_INTEGER_LIMITS,
        ):
            if name in values:
                values[name] = _integer(name, values[name])
        config = BufferConfig(**values)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"component configuration: {exc}") from exc
    return config.with_catalog(catalog)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    return int(value)


def default_configuration(catalog: MetricCatalog) -> dict[str, Any]:
    """The recipe's DefaultConfiguration: this module's defaults plus the catalog's thresholds."""
    defaults = BufferConfig(factory_id="unset", data_dir=Path("data"))
    # factoryId is set per thing group by the deployment (empty: the thing name is used).
    document: dict[str, Any] = {"factoryId": "", "dataDir": "data"}
    for key, name in _KEYS.items():
        if name in (
            "factory_id",
            "data_dir",
            "thresholds",
            "input_topics",
            "status_topic",
            "predictions_topic",
        ):
            continue  # per deployment, or derived from factoryId
        document[key] = getattr(defaults, name)
    document["maxDiskBytes"] = defaults.max_disk_bytes
    document["thresholds"] = catalog.edge_threshold_config()
    return document
