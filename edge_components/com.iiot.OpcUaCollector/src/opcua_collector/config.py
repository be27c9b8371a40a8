"""The collector's configuration, validated: a bad update is refused with every reason.

The Greengrass component configuration (camelCase, as recipe.yaml's DefaultConfiguration) or the
same document from a YAML/JSON file for local runs:

    factoryId: F01                      # default: the gateway's thing name
    plcs:
      line1:                            # a name for logs and status
        endpoint: opc.tcp://192.168.10.20:4840
        publishingIntervalMs: 1000      # how often the PLC sends the changes it sampled
        samplingIntervalMs: 250         # how often the PLC samples each node
        queueSize: 10                   # changes the PLC keeps per node between two publishes
        timestamps: source              # source (the PLC's clock), server, or gateway
        nodes:
          - nodeId: ns=2;s=Pump1.Temperature   # or nsu=<namespace URI>;s=... (index-proof)
            machineId: pump-1
            sensorId: temp-1
            metric: temperature         # a metric of the catalog; its unit is the reading's
            scale: 1.0                  # value = raw * scale + offset (e.g. degF -> degC)
            offset: 0.0

Each node becomes readings of (factoryId, machineId, sensorId, metric, the catalog's unit).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from iiot import topics
from iiot.catalog import MetricCatalog
from iiot.contract import ID_PATTERN, ID_RULE

Timestamps = Literal["source", "server", "gateway"]
TIMESTAMPS: tuple[str, ...] = ("source", "server", "gateway")
SECURITY_POLICIES = ("Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")
SECURITY_MODES = ("Sign", "SignAndEncrypt")
STATUS_TOPIC = "factory/{factory_id}/collector/status"
# The SensorBuffer's input limits (iiot.wire.Limits): a payload stays far below them.
MAX_BATCH_READINGS = 5_000
_ID_RE = re.compile(ID_PATTERN)
_NODE_ID_RE = re.compile(r"^(ns=\d+;|nsu=[^;]+;)?(i=\d+|s=.+|g=[0-9a-fA-F-]{36}|b=.+)$")


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem."""


@dataclass(frozen=True)
class NodeMapping:
    """One PLC node and the series its values become."""

    node_id: str
    machine_id: str
    sensor_id: str
    metric: str
    unit: str
    scale: float = 1.0
    offset: float = 0.0
    decimals: int = 9  # the metric's resolution: values are rounded to it


@dataclass(frozen=True)
class PlcConfig:
    name: str
    endpoint: str
    nodes: tuple[NodeMapping, ...]
    publishing_interval_ms: float = 1000.0
    sampling_interval_ms: float = 250.0
    queue_size: int = 10
    timestamps: Timestamps = "source"
    timeout_s: float = 4.0
    watchdog_interval_s: float = 1.0
    username: str = ""
    password_file: str = ""
    security_policy: str = ""  # empty: no security (a PLC network's usual default)
    security_mode: str = "SignAndEncrypt"
    certificate: str = ""
    private_key: str = ""
    server_certificate: str = ""

    def security_string(self) -> str | None:
        """asyncua's `Policy,Mode,certificate,private_key[,server_certificate]`, or None."""
        if not self.security_policy:
            return None
        parts = [self.security_policy, self.security_mode, self.certificate, self.private_key]
        if self.server_certificate:
            parts.append(self.server_certificate)
        return ",".join(parts)


@dataclass(frozen=True)
class CollectorConfig:
    factory_id: str
    plcs: tuple[PlcConfig, ...] = ()
    readings_topic: str = ""  # default: factory/<factoryId>/readings (the SensorBuffer's input)
    status_topic: str = ""  # default: factory/<factoryId>/collector/status
    publish_interval_ms: float = 200.0
    max_batch_readings: int = 500
    backlog_max_readings: int = 100_000
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    health_interval_s: float = 30.0

    @property
    def readings(self) -> str:
        return self.readings_topic or topics.readings_topic(self.factory_id)

    @property
    def status(self) -> str:
        return self.status_topic or STATUS_TOPIC.format(factory_id=self.factory_id)


# Component configuration keys -> CollectorConfig fields, with (low, high) for numbers.
_KEYS: dict[str, tuple[str, tuple[float, float] | None]] = {
    "factoryId": ("factory_id", None),
    "readingsTopic": ("readings_topic", None),
    "statusTopic": ("status_topic", None),
    "publishIntervalMs": ("publish_interval_ms", (1.0, 60_000.0)),
    "maxBatchReadings": ("max_batch_readings", (1, MAX_BATCH_READINGS)),
    "backlogMaxReadings": ("backlog_max_readings", (100, 10_000_000)),
    "backoffInitialSeconds": ("backoff_initial_s", (0.01, 3600.0)),
    "backoffMaxSeconds": ("backoff_max_s", (0.01, 3600.0)),
    "healthIntervalSeconds": ("health_interval_s", (0.1, 86_400.0)),
    "plcs": ("plcs", None),
}
_PLC_KEYS: dict[str, tuple[str, tuple[float, float] | None]] = {
    "endpoint": ("endpoint", None),
    "nodes": ("nodes", None),
    "publishingIntervalMs": ("publishing_interval_ms", (10.0, 3_600_000.0)),
    "samplingIntervalMs": ("sampling_interval_ms", (0.0, 3_600_000.0)),
    "queueSize": ("queue_size", (1, 10_000)),
    "timestamps": ("timestamps", None),
    "timeoutSeconds": ("timeout_s", (0.1, 600.0)),
    "watchdogIntervalSeconds": ("watchdog_interval_s", (0.1, 600.0)),
    "username": ("username", None),
    "passwordFile": ("password_file", None),
    "securityPolicy": ("security_policy", None),
    "securityMode": ("security_mode", None),
    "certificate": ("certificate", None),
    "privateKey": ("private_key", None),
    "serverCertificate": ("server_certificate", None),
}
_NODE_KEYS = ("nodeId", "machineId", "sensorId", "metric", "scale", "offset")
_INTEGERS = {"max_batch_readings", "backlog_max_readings", "queue_size"}


def _number(
    problems: list[str], where: str, value: Any, bounds: tuple[float, float], integer: bool
) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        problems.append(f"{where} must be a number, got {value!r}")
        return None
    try:
        number = float(value)
    except ValueError:
        problems.append(f"{where} must be a number, got {value!r}")
        return None
    low, high = bounds
    if not low <= number <= high:
        problems.append(f"{where} must be within [{low:g}, {high:g}], got {number:g}")
        return None
    if integer:
        if number != int(number):
            problems.append(f"{where} must be a whole number, got {number:g}")
            return None
        return int(number)
    return number


def _unknown(problems: list[str], where: str, raw: Mapping[str, Any], known: Any) -> None:
    unknown = sorted(set(raw) - set(known) - {"accessControl"})
    if unknown:
        problems.append(
            f"{where}unknown keys {unknown} (known: {', '.join(sorted(known))}): a typo must "
            "not fall back to a default"
        )


def _text(problems: list[str], where: str, value: Any) -> str:
    if not isinstance(value, str):
        problems.append(f"{where} must be a string, got {value!r}")
        return ""
    return value.strip()


def _node(problems: list[str], where: str, raw: Any, catalog: MetricCatalog) -> NodeMapping | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{where} must be a mapping with {', '.join(_NODE_KEYS)}")
        return None
    before = len(problems)
    _unknown(problems, f"{where}: ", raw, _NODE_KEYS)
    node_id = _text(problems, f"{where}.nodeId", raw.get("nodeId", ""))
    if not _NODE_ID_RE.match(node_id):
        problems.append(
            f"{where}.nodeId {node_id!r} is not an OPC UA node id (ns=2;s=Name, ns=3;i=1001, "
            "nsu=urn:plc;s=Name)"
        )
    ids = {}
    for key in ("machineId", "sensorId"):
        value = _text(problems, f"{where}.{key}", raw.get(key, ""))
        if not _ID_RE.match(value):
            problems.append(f"{where}.{key} {value!r} is not a valid id ({ID_RULE})")
        ids[key] = value
    metric = _text(problems, f"{where}.metric", raw.get("metric", ""))
    if metric not in catalog:
        problems.append(
            f"{where}.metric {metric!r} is not in the metric catalog ({', '.join(sorted(catalog))})"
        )
    scale = _number(problems, f"{where}.scale", raw.get("scale", 1.0), (-1e12, 1e12), False)
    offset = _number(problems, f"{where}.offset", raw.get("offset", 0.0), (-1e12, 1e12), False)
    if scale == 0:
        problems.append(f"{where}.scale must not be 0")
    if len(problems) > before:
        return None
    spec = catalog[metric]
    return NodeMapping(
        node_id=node_id,
        machine_id=ids["machineId"],
        sensor_id=ids["sensorId"],
        metric=metric,
        unit=spec.unit,
        scale=float(scale if scale is not None else 1.0),
        offset=float(offset or 0.0),
        decimals=spec.decimals,
    )


def _plc(problems: list[str], name: str, raw: Any, catalog: MetricCatalog) -> PlcConfig | None:
    where = f"plcs.{name}"
    if not _ID_RE.match(name):
        problems.append(f"{where}: the PLC's name must be a valid id ({ID_RULE})")
    if not isinstance(raw, Mapping):
        problems.append(f"{where} must be a mapping with endpoint and nodes")
        return None
    before = len(problems)
    _unknown(problems, f"{where}: ", raw, _PLC_KEYS)
    values: dict[str, Any] = {}
    for key, (attribute, bounds) in _PLC_KEYS.items():
        if key not in raw or key == "nodes":
            continue
        if bounds is None:
            values[attribute] = _text(problems, f"{where}.{key}", raw[key])
        else:
            number = _number(problems, f"{where}.{key}", raw[key], bounds, attribute in _INTEGERS)
            if number is not None:
                values[attribute] = number
    endpoint = values.get("endpoint", "")
    if not endpoint.startswith("opc.tcp://") or len(endpoint) <= len("opc.tcp://"):
        problems.append(f"{where}.endpoint must look like opc.tcp://HOST:4840, got {endpoint!r}")
    if values.get("timestamps", "source") not in TIMESTAMPS:
        problems.append(f"{where}.timestamps must be one of {', '.join(TIMESTAMPS)}")
    policy = values.get("security_policy", "")
    if policy:
        if policy not in SECURITY_POLICIES:
            problems.append(
                f"{where}.securityPolicy must be one of {', '.join(SECURITY_POLICIES)} "
                "(or empty for none)"
            )
        if values.get("security_mode", "SignAndEncrypt") not in SECURITY_MODES:
            problems.append(f"{where}.securityMode must be one of {', '.join(SECURITY_MODES)}")
        if not values.get("certificate") or not values.get("private_key"):
            problems.append(
                f"{where}: securityPolicy needs the gateway's certificate and privateKey files"
            )
    if values.get("password_file") and not values.get("username"):
        problems.append(f"{where}.passwordFile needs a username")
    raw_nodes = raw.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        problems.append(f"{where}.nodes must be a non-empty list of node mappings")
        raw_nodes = []
    nodes: list[NodeMapping] = []
    series: dict[tuple[str, str, str], str] = {}
    for position, raw_node in enumerate(raw_nodes):
        node = _node(problems, f"{where}.nodes[{position}]", raw_node, catalog)
        if node is None:
            continue
        series_key = (node.machine_id, node.sensor_id, node.metric)
        if series_key in series:
            problems.append(
                f"{where}.nodes[{position}]: {node.machine_id}/{node.sensor_id}/{node.metric} "
                f"is already the series of node {series[series_key]}"
            )
        series[series_key] = node.node_id
        if node.node_id in (n.node_id for n in nodes):
            problems.append(f"{where}.nodes[{position}]: node {node.node_id} is mapped twice")
        nodes.append(node)
    if len(problems) > before:
        return None
    return PlcConfig(name=name, nodes=tuple(nodes), **values)


def from_mapping(
    raw: Mapping[str, Any], catalog: MetricCatalog, *, factory_id: str | None = None
) -> CollectorConfig:
    """From the component configuration; `factory_id` (the thing name) fills an empty
    factoryId. Raises ConfigError listing every problem."""
    problems: list[str] = []
    if not isinstance(raw, Mapping):
        raise ConfigError(f"invalid OpcUaCollector configuration: not a mapping: {raw!r}")
    _unknown(problems, "", raw, _KEYS)
    values: dict[str, Any] = {}
    for key, (attribute, bounds) in _KEYS.items():
        if key not in raw or key == "plcs":
            continue
        if bounds is None:
            values[attribute] = _text(problems, key, raw[key])
        else:
            number = _number(problems, key, raw[key], bounds, attribute in _INTEGERS)
            if number is not None:
                values[attribute] = number
    if not values.get("factory_id"):
        values["factory_id"] = (factory_id or "").strip()
    if not _ID_RE.match(values["factory_id"]):
        problems.append(
            f"factoryId {values['factory_id']!r} is not a valid id ({ID_RULE}); "
            "it defaults to the gateway's thing name"
        )
    for key in ("readings_topic", "status_topic"):
        topic = values.get(key, "")
        if any(c in topic for c in "#+"):
            problems.append(f"{key}: {topic!r} must be a topic name, not a filter")
    initial = values.get("backoff_initial_s", 1.0)
    if values.get("backoff_max_s", 30.0) < initial:
        problems.append("backoffMaxSeconds must be at least backoffInitialSeconds")
    raw_plcs = raw.get("plcs") or {}
    plcs = []
    if not isinstance(raw_plcs, Mapping):
        problems.append("plcs must be a mapping of PLC name -> endpoint and nodes")
        raw_plcs = {}
    for name, raw_plc in raw_plcs.items():
        plc = _plc(problems, str(name), raw_plc, catalog)
        if plc is not None:
            plcs.append(plc)
    endpoints = [plc.endpoint for plc in plcs]
    problems.extend(
        f"plcs: endpoint {e} is configured twice"
        for e in sorted(set(endpoints))
        if endpoints.count(e) > 1
    )
    if problems:
        raise ConfigError("invalid OpcUaCollector configuration: " + "; ".join(problems))
    return CollectorConfig(plcs=tuple(plcs), **values)


def default_configuration() -> dict[str, Any]:
    """The recipe's DefaultConfiguration (without accessControl): the defaults above, no PLC
    (each factory's deployment merges its own `plcs`)."""
    defaults = {f.name: f.default for f in fields(CollectorConfig)}
    document: dict[str, Any] = {"factoryId": "{iot:thingName}"}
    for key, (attribute, _) in _KEYS.items():
        if key in ("factoryId", "plcs"):
            continue
        document[key] = defaults[attribute]
    document["plcs"] = {}
    return document
