"""The OPC UA collector against a real PLC (an asyncua server in its own process on 127.0.0.1,
tests/edge/opcua_plc.py) and a real mosquitto: values reach the SensorBuffer's input topic and
through the SensorBuffer the cloud; the PLC absent at start, killed and back on the same port is
survived; bad values are refused with the reason and counted; the backlog is bounded."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from asyncua import ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID
from opcua_collector.collector import OpcUaCollector, application_uri
from opcua_collector.config import ConfigError, default_configuration, from_mapping
from opcua_collector.main import gateway_config, validation_problem
from paho.mqtt.enums import CallbackAPIVersion

from edge_runtime.mqtt import MqttTransport
from edge_runtime.transport import MemoryTransport
from iiot.contract import Validator
from iiot.topics import SENSOR_DATA
from iiot.wire import validate_payload
from local_platform.localbroker import free_port
from tests.edge.mqtt_helpers import Collector, readings_of, unique_batches, wait_for

PLC_SCRIPT = Path(__file__).with_name("opcua_plc.py")
NS = "nsu=urn:iiot:test-plc;s=Pump1."
GOOD = {"Temperature": "temperature", "Vibration": "vibration", "Rpm": "rpm"}
BAD = {"Overheat": "temperature", "Broken": "temperature", "Label": "temperature"}


class Plc:
    """The simulated PLC as a process: started on a fixed port, killed (power cut), started
    again on the same port (the PLC coming back)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/plc"
        self.process: subprocess.Popen[str] | None = None

    def start(
        self, generation: int = 0, secure: Path | None = None, user: str | None = None
    ) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(PLC_SCRIPT),
                str(self.port),
                "--generation",
                str(generation),
                *(["--secure", str(secure)] if secure else []),
                *(["--user", user] if user else []),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "ready PORT", or "" if it died
        assert line.startswith("ready"), f"the PLC did not start (exit {self.process.poll()})"

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def plc() -> Iterator[Plc]:
    running = Plc(free_port())
    yield running
    running.stop()


class Readings:
    """A subscriber to the SensorBuffer's input topic: every reading published on it."""

    def __init__(self, port: int, topic: str = "factory/F01/readings") -> None:
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _message(self, _client: Any, _userdata: Any, message: Any) -> None:
        with self._lock:
            self.payloads.append(bytes(message.payload))

    def readings(self) -> list[dict[str, Any]]:
        with self._lock:
            payloads = list(self.payloads)
        return [r for p in payloads for r in json.loads(p)["readings"]]

    def of(self, sensor: str) -> list[dict[str, Any]]:
        return [r for r in self.readings() if r["sensor_id"] == sensor]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def configuration(endpoint: str, nodes: dict[str, str], **overrides: Any) -> dict[str, Any]:
    return {
        "factoryId": "F01",
        "publishIntervalMs": 50,
        "backoffInitialSeconds": 0.2,
        "backoffMaxSeconds": 1.0,
        "healthIntervalSeconds": 0.5,
        "plcs": {
            "line1": {
                "endpoint": endpoint,
                "publishingIntervalMs": 100,
                "samplingIntervalMs": 50,
                "nodes": [
                    {
                        "nodeId": f"{NS}{name}",
                        "machineId": "pump-1",
                        "sensorId": name.lower(),
                        "metric": metric,
                    }
                    for name, metric in nodes.items()
                ],
            }
        },
        **overrides,
    }


@pytest.fixture
def collector_factory(catalog) -> Iterator[Callable[..., OpcUaCollector]]:
    made: list[OpcUaCollector] = []

    def make(raw: dict[str, Any], broker_url: str) -> OpcUaCollector:
        transport = MqttTransport(broker_url, None, "opcua-test", persistent_session=False)
        collector = OpcUaCollector(from_mapping(raw, catalog), transport, catalog)
        collector.start()
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.stop()


@pytest.mark.slow
def test_plc_values_reach_the_buffer_input_and_through_the_buffer_the_cloud(
    plc, broker_factory, component_factory, collector_factory, catalog
) -> None:
    local, cloud = broker_factory(), broker_factory(persistent=True)
    uploads = Collector(cloud.port, (SENSOR_DATA,), "cloud-opcua")
    buffer = component_factory(local.url, cloud.url)
    buffer.start(wait_port=local.port)
    readings = Readings(local.port)
    plc.start()
    collector = collector_factory(configuration(plc.endpoint, GOOD), local.url)
    try:
        wait_for(
            lambda: all(len(readings.of(name.lower())) >= 10 for name in GOOD),
            30,
            "ten readings of each PLC node on factory/F01/readings",
        )
        collector.stop()
        # Each reading is the contract's: the node's series, the catalog's unit, the PLC's
        # value and source timestamp; the SensorBuffer's own validation accepts every payload.
        validator = Validator(catalog)
        for payload in readings.payloads:
            validated = validate_payload(payload, validator)
            assert validated.rejects == []
        for name, metric in GOOD.items():
            series = readings.of(name.lower())
            assert {(r["factory_id"], r["machine_id"], r["metric"], r["unit"]) for r in series} == {
                ("F01", "pump-1", metric, catalog[metric].unit)
            }
            timestamps = [r["timestamp"] for r in series]
            assert len(set(timestamps)) == len(timestamps)  # no reading twice
        temperatures = {r["value"] for r in readings.of("temperature")}
        assert temperatures <= {40.0 + k * 0.5 for k in range(20)}
        assert {r["value"] for r in readings.of("rpm")} <= set(map(float, range(1500, 1550)))
        # Everything it published arrived, the last flush at stop included.
        wait_for(
            lambda: len(readings.readings()) == collector.published_readings,
            10,
            "every published reading on the input topic",
        )
        published = readings.readings()
        # Through the SensorBuffer to the cloud: every reading the collector published.
        expected = {(r["sensor_id"], r["timestamp"], r["value"]) for r in published}

        def uploaded() -> set[tuple[str, int, float]]:
            keys = set()
            for batch in unique_batches(uploads.batches()).values():
                for (_, _, sensor, _, _), ts, value in readings_of(batch.columns):
                    keys.add((sensor, ts, value))
            return keys

        wait_for(lambda: uploaded() == expected, 60, "the SensorBuffer uploading every reading")
    finally:
        readings.close()
        uploads.close()
        buffer.stop()


@pytest.mark.slow
def test_a_plc_absent_at_start_killed_and_back_is_survived(
    plc, broker, collector_factory, caplog
) -> None:
    readings = Readings(broker.port)
    collector = collector_factory(configuration(plc.endpoint, GOOD), broker.url)
    try:
        # Not there at start: the collector retries until it is.
        wait_for(lambda: collector.plcs["line1"].last_error != "", 10, "a failed first connect")
        assert readings.readings() == []
        said = lambda: {r.getMessage() for r in caplog.records if getattr(r, "plc", None)}  # noqa: E731
        wait_for(lambda: said() != set(), 10, "the failed connect logged")
        assert said() == {"plc not reachable; retrying"}
        plc.start(generation=0)
        wait_for(lambda: len(readings.of("temperature")) >= 5, 30, "readings once the PLC is up")
        # A power cut: SIGKILL, no goodbye to the client.
        plc.kill()
        wait_for(lambda: not collector.plcs["line1"].connected, 20, "the lost session noticed")
        before = len(readings.readings())
        # The PLC comes back on the same port, its values 10 degC higher and its namespace at
        # another index (generation 1): the nsu= node ids are resolved again.
        plc.start(generation=1)
        wait_for(
            lambda: any(r["value"] >= 50.0 for r in readings.of("temperature")),
            30,
            "readings from the restarted PLC",
        )
        wait_for(lambda: len(readings.readings()) >= before + 15, 30, "every node flowing again")
        state = collector.plcs["line1"]
        assert state.connected
        assert state.reconnects >= 1
        assert state.sessions == 2
        status = collector.publish_status()
        assert status["plcs"]["line1"]["connected"] is True
        assert status["dropped"] == 0
    finally:
        readings.close()


@pytest.mark.slow
def test_bad_values_are_refused_with_the_reason_and_counted(
    plc, broker, collector_factory, caplog
) -> None:
    readings = Readings(broker.port)
    plc.start()
    nodes = {"Vibration": "vibration", **BAD}
    collector = collector_factory(
        configuration(plc.endpoint, nodes, statusTopic="factory/F01/collector/status"),
        broker.url,
    )
    try:
        # A server reports a node whose status stays bad once (its value is not "new" data).
        least = {"Overheat": 3, "Broken": 1, "Label": 3}
        wait_for(
            lambda: all(collector.rejected_by_node[f"line1/{NS}{n}"] >= least[n] for n in BAD),
            30,
            "the rejects of each bad node",
        )
        wait_for(lambda: len(readings.of("vibration")) >= 3, 10, "the good node still flowing")
    finally:
        readings.close()
    reasons = {node.removeprefix(f"line1/{NS}"): r for node, r in collector.last_rejects.items()}
    assert reasons["Overheat"].startswith("value: ")
    assert "outside the physically valid range" in reasons["Overheat"]
    assert reasons["Broken"] == "status: the PLC marks the value BadSensorFailure (not Good)"
    assert reasons["Label"].startswith("value: a String ('running")
    assert "is not a number" in reasons["Label"]
    assert {"value", "status"} <= set(collector.rejected)
    # Nothing of them published; each logged with its node and reason (once, then throttled).
    assert {r["sensor_id"] for r in readings.readings()} == {"vibration"}
    logged = [r for r in caplog.records if r.getMessage() == "opcua value rejected"]
    assert {r.node_id for r in logged} == {f"{NS}{n}" for n in BAD}  # type: ignore[attr-defined]
    assert all(r.reason for r in logged)  # type: ignore[attr-defined]
    status = collector.publish_status()
    assert status["rejected"]["value"] >= 6
    assert status["rejected"]["status"] >= 1
    # the refused values themselves are kept (the latest, bounded) with node and reason
    kept = {r["node_id"].removeprefix(NS): r for r in status["recent_rejects"]}
    assert set(kept) == set(BAD)
    assert kept["Broken"]["status"] == "BadSensorFailure"
    assert kept["Label"]["value"].startswith("'running")
    assert kept["Overheat"]["reason"].startswith("value: ")
    assert kept["Broken"]["reason"].startswith("status: ")


@pytest.mark.slow
def test_an_unknown_node_is_reported_and_the_others_flow(plc, broker, collector_factory) -> None:
    readings = Readings(broker.port)
    plc.start()
    raw = configuration(plc.endpoint, {"Rpm": "rpm"})
    raw["plcs"]["line1"]["nodes"].append(
        {"nodeId": "ns=2;s=Pump1.Missing", "machineId": "pump-1", "sensorId": "x", "metric": "rpm"}
    )
    # a namespace URI the PLC does not publish (a typo): refused too, not the whole session
    unknown_namespace = "nsu=urn:iiot:no-such-plc;s=Pump1.Rpm"
    raw["plcs"]["line1"]["nodes"].append(
        {"nodeId": unknown_namespace, "machineId": "pump-1", "sensorId": "y", "metric": "rpm"}
    )
    collector = collector_factory(raw, broker.url)
    try:
        wait_for(lambda: len(readings.of("rpm")) >= 3, 30, "the known node flowing")
    finally:
        readings.close()
    refused = collector.plcs["line1"].nodes_refused
    assert refused["ns=2;s=Pump1.Missing"] == "BadNodeIdUnknown"
    assert refused[unknown_namespace].startswith("BadNamespaceUnknown")
    assert len(refused) == 2
    assert collector.plcs["line1"].nodes_subscribed == 1


class _Failing(MemoryTransport):
    """Local publishes fail while `down` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def publish_local(self, topic: str, payload: bytes) -> None:
        if self.down:
            raise ConnectionError("local bus unavailable")
        super().publish_local(topic, payload)

    def publish_cloud(self, topic: str, payload: bytes) -> Future[None]:
        raise AssertionError("the collector never publishes to the cloud")


def test_the_backlog_is_bounded_drops_the_oldest_and_drains_in_order(catalog) -> None:
    raw = configuration("opc.tcp://127.0.0.1:1/plc", {"Temperature": "temperature"})
    raw["backlogMaxReadings"] = 100
    raw["maxBatchReadings"] = 30
    config = from_mapping(raw, catalog)
    transport = _Failing()
    collector = OpcUaCollector(config, transport, catalog)
    plc = config.plcs[0]
    node = plc.nodes[0]
    start_ms = 1_700_000_000_000
    for i in range(250):
        value = ua.DataValue(
            ua.Variant(20.0 + i * 0.01, ua.VariantType.Double),
            SourceTimestamp=datetime.fromtimestamp(start_ms / 1000 + i, UTC),
        )
        collector.on_value(plc, node, value)
        if i % 50 == 0:
            collector._flush()  # the publisher's tick, while the bus is down
    assert len(collector.backlog) == 100
    assert collector.dropped == 150
    assert collector.publish_failures == 5
    transport.down = False
    collector._flush()
    published = [r for _, p in transport.local for r in json.loads(p)["readings"]]
    assert [r["timestamp"] for r in published] == [start_ms + i * 1000 for i in range(150, 250)]
    assert all(len(json.loads(p)["readings"]) <= 30 for _, p in transport.local)
    assert collector.status()["backlog"] == 0


def test_a_repeated_initial_notification_is_skipped(catalog) -> None:
    config = from_mapping(configuration("opc.tcp://plc:4840", {"Rpm": "rpm"}), catalog)
    collector = OpcUaCollector(config, MemoryTransport(), catalog)
    plc = config.plcs[0]
    value = ua.DataValue(
        ua.Variant(1500, ua.VariantType.Int32),
        SourceTimestamp=datetime.fromtimestamp(1_700_000_000, UTC),
    )
    collector.on_value(plc, plc.nodes[0], value)
    collector.on_value(plc, plc.nodes[0], value)  # a new session's first notification
    assert len(collector.backlog) == 1
    assert collector.repeated == 1


def test_scale_offset_and_the_metrics_resolution(catalog) -> None:
    raw = configuration("opc.tcp://plc:4840", {"Temperature": "temperature"})
    raw["plcs"]["line1"]["nodes"][0].update(scale=5 / 9, offset=-160 / 9)  # degF -> degC
    config = from_mapping(raw, catalog)
    collector = OpcUaCollector(config, MemoryTransport(), catalog)
    plc = config.plcs[0]
    collector.on_value(
        plc,
        plc.nodes[0],
        ua.DataValue(ua.Variant(212.0, ua.VariantType.Double)),  # no timestamps: the gateway's
    )
    (reading,) = collector.backlog
    assert reading.value == 100.0
    assert reading.unit == "degC"
    assert abs(reading.timestamp - time.time() * 1000) < 60_000


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"plcs": {"line1": {"endpoint": "http://plc", "nodes": []}}}, "opc.tcp://HOST:4840"),
        ({"plcs": {"line1": {"endpoint": "opc.tcp://plc", "nodes": []}}}, "non-empty list"),
        ({"publishIntervalMs": 0}, "publishIntervalMs must be within"),
        ({"maxBatchReadings": 10_001}, "maxBatchReadings must be within"),
        ({"factoryId": "bad id"}, "factoryId 'bad id' is not a valid id"),
        ({"plcz": {}}, "unknown keys ['plcz']"),
        ({"backoffInitialSeconds": 5, "backoffMaxSeconds": 1}, "backoffMaxSeconds must be"),
    ],
)
def test_a_bad_configuration_is_refused_with_the_reason(catalog, change, expected) -> None:
    raw = {**configuration("opc.tcp://plc:4840", {"Rpm": "rpm"}), **change}
    with pytest.raises(ConfigError) as error:
        from_mapping(raw, catalog)
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ({"nodeId": "Pump1.Temp"}, "is not an OPC UA node id"),
        ({"metric": "humidity"}, "'humidity' is not in the metric catalog"),
        ({"machineId": "pump 1"}, "machineId 'pump 1' is not a valid id"),
        ({"scale": 0}, "scale must not be 0"),
        ({"scale": "x"}, "scale must be a number"),
        ({"unit": "degF"}, "unknown keys ['unit']"),
    ],
)
def test_a_bad_node_mapping_is_refused_with_the_reason(catalog, node, expected) -> None:
    raw = configuration("opc.tcp://plc:4840", {"Rpm": "rpm"})
    raw["plcs"]["line1"]["nodes"][0].update(node)
    with pytest.raises(ConfigError) as error:
        from_mapping(raw, catalog)
    assert expected in str(error.value)


def test_two_nodes_of_one_series_are_refused(catalog) -> None:
    raw = configuration("opc.tcp://plc:4840", {"Rpm": "rpm", "Temperature": "rpm"})
    raw["plcs"]["line1"]["nodes"][1]["sensorId"] = "rpm"
    with pytest.raises(ConfigError, match="is already the series of node"):
        from_mapping(raw, catalog)


def test_the_recipe_defaults_are_the_configurations_and_its_topics_are_allowed(catalog) -> None:
    recipe = yaml.safe_load(
        (
            Path(__file__).parents[2] / "edge_components/com.iiot.OpcUaCollector/recipe.yaml"
        ).read_text()
    )
    defaults = dict(recipe["ComponentConfiguration"]["DefaultConfiguration"])
    access = defaults.pop("accessControl")
    assert defaults == default_configuration()
    # With the thing name as factory id, what it publishes is exactly what it may publish.
    config = from_mapping({**defaults, "factoryId": "gw-1"}, catalog)  # as interpolated
    (policy,) = access["aws.greengrass.ipc.pubsub"].values()
    assert policy["operations"] == ["aws.greengrass#PublishToTopic"]
    resources = {r.replace("{iot:thingName}", "gw-1") for r in policy["resources"]}
    assert resources == {config.readings, config.status}
    assert config.readings == "factory/gw-1/readings"  # the SensorBuffer's input


def test_an_uninterpolated_thing_name_falls_back_to_the_gateways(catalog, monkeypatch) -> None:
    monkeypatch.setenv("AWS_IOT_THING_NAME", "gw-2")
    assert gateway_config(default_configuration(), catalog).factory_id == "gw-2"
    assert "plcs must be a mapping" in (validation_problem({"plcs": "line1"}, catalog) or "")


@pytest.mark.slow
def test_a_plc_that_requires_basic256sha256_is_read_with_the_gateways_certificate(
    plc, broker, collector_factory, tmp_path
) -> None:
    """Signed and encrypted, the session's application URI taken from the certificate."""
    key, cert = tmp_path / "gateway-key.pem", tmp_path / "gateway-cert.der"
    asyncio.run(
        setup_self_signed_certificate(
            key, cert, "urn:iiot:gateway:gw-1", "gw-1", [ExtendedKeyUsageOID.CLIENT_AUTH], {}
        )
    )
    assert application_uri(str(cert)) == "urn:iiot:gateway:gw-1"
    plc.start(secure=tmp_path)
    readings = Readings(broker.port)
    raw = configuration(plc.endpoint, {"Rpm": "rpm"})
    plain = dict(raw["plcs"]["line1"])
    raw["plcs"]["line1"].update(
        securityPolicy="Basic256Sha256",
        securityMode="SignAndEncrypt",
        certificate=str(cert),
        privateKey=str(key),
        serverCertificate=str(tmp_path / "plc-cert.der"),
    )
    raw["plcs"]["unsecured"] = {**plain, "endpoint": plc.endpoint.replace("/plc", "/plc/")}
    collector = collector_factory(raw, broker.url)
    try:
        wait_for(lambda: len(readings.of("rpm")) >= 3, 30, "readings over the secure channel")
    finally:
        readings.close()
    assert collector.plcs["line1"].connected
    # The same PLC without security is refused (it offers Basic256Sha256 only).
    assert not collector.plcs["unsecured"].connected
    assert collector.plcs["unsecured"].last_error


def test_a_plc_that_requires_a_user_is_read_with_the_password_file_and_refuses_others(
    plc, broker, collector_factory, tmp_path, caplog
) -> None:
    """The PLC admits `gateway` with its password only: the configured username and
    passwordFile sign in; a wrong password and a session without a user are refused, each with
    the PLC's reason in the status and the log saying it refused (not that it is unreachable),
    and keep being retried without taking the others down."""
    plc.start(user="gateway:s3cret")
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text("s3cret\n")
    wrong.write_text("s3cret2\n")
    readings = Readings(broker.port)
    raw = configuration(plc.endpoint, {"Rpm": "rpm"})
    line = raw["plcs"]["line1"]

    def machine(name: str) -> list[dict[str, Any]]:
        return [{**node, "machineId": name} for node in line["nodes"]]

    # The same PLC under three spellings of its endpoint (one session per configured PLC).
    anonymous = {**line, "endpoint": plc.endpoint + "//", "nodes": machine("pump-3")}
    line.update(username="gateway", passwordFile=str(right))
    raw["plcs"]["wrong"] = {
        **line,
        "endpoint": plc.endpoint + "/",
        "passwordFile": str(wrong),
        "nodes": machine("pump-2"),
    }
    raw["plcs"]["anonymous"] = anonymous
    collector = collector_factory(raw, broker.url)
    try:
        wait_for(lambda: len(readings.of("rpm")) >= 3, 30, "readings from the signed-in session")
        wait_for(
            lambda: "BadUserAccessDenied" in collector.plcs["wrong"].last_error,
            30,
            "the wrong password refused",
        )
        wait_for(
            lambda: "BadIdentityTokenRejected" in collector.plcs["anonymous"].last_error,
            30,
            "the session without a user refused",
        )
        assert collector.plcs["line1"].connected
        assert not collector.plcs["wrong"].connected
        assert not collector.plcs["anonymous"].connected
        status = collector.publish_status()["plcs"]
        assert "BadUserAccessDenied" in status["wrong"]["last_error"]
        assert status["line1"]["last_error"] == ""
        said = lambda: {r.plc: r.getMessage() for r in caplog.records if getattr(r, "plc", None)}  # noqa: E731
        wait_for(lambda: {"wrong", "anonymous"} <= said().keys(), 10, "both refusals logged")
        assert said()["wrong"] == "plc refused the session; retrying"
        assert said()["anonymous"] == "plc refused the session; retrying"
    finally:
        readings.close()
    assert {r["machine_id"] for r in readings.readings()} == {"pump-1"}


def test_the_command_line_follows_the_conventions(tmp_path: Path, capsys) -> None:
    from opcua_collector.main import main

    main(["--help"])  # usage on stdout, exit 0
    assert "python -m opcua_collector run" in capsys.readouterr().out
    with pytest.raises(SystemExit) as unknown:
        main(["bogus"])
    assert unknown.value.code == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
    listed = tmp_path / "collector.yaml"
    listed.write_text("- line1\n")
    with pytest.raises(SystemExit) as refused:
        main(["run", "--config", str(listed)])
    assert refused.value.code == 2
    assert "must be a mapping" in capsys.readouterr().err
