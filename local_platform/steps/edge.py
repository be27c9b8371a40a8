"""The edge step of `make demo`: sensors -> mosquitto -> SensorBuffer -> "IoT Core".

A private mosquitto on a free 127.0.0.1 port stands in for both the gateway's local broker and
IoT Core. The component runs in-process with the MQTT 5 transport; the first simulated hour of
the demo fleet is published the way sensors do (JSON per machine and instant, malformed
payloads included); a consumer on the upload topic counts what arrives, de-duplicated by
batch id.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from typing import Any

from sensor_buffer.config import BufferConfig
from sensor_buffer.main import SensorBuffer

from iiot.topics import ANOMALIES, LOCAL_ALERTS, SENSOR_DATA
from local_platform.demo import DemoContext, Figures

DRAIN_TIMEOUT_S = 20.0


def edge_step(context: DemoContext) -> Figures:
    if importlib.util.find_spec("awscrt") is None:
        return {"skipped": "the edge step needs the `edge` extra (awscrt): pip install '.[edge]'"}
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_runtime.mqtt import MqttTransport, session_client_id
    from iiot.wire import decode_batch
    from local_platform.localbroker import mosquitto
    from local_platform.publisher import publish
    from local_platform.simulator import FleetSimulator

    factory = "F01"
    simulator = FleetSimulator(context.fleet, context.catalog)
    columns = next(iter(simulator.chunks()))
    mask = [key.factory_id == factory for key in columns.series]
    columns = columns.take([mask[i] for i in columns.series_index.tolist()])  # type: ignore[arg-type]

    received: dict[str, list[bytes]] = {SENSOR_DATA: [], ANOMALIES: [], LOCAL_ALERTS: []}
    alert_times: list[float] = []
    lock = threading.Lock()

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        with lock:
            received.setdefault(message.topic, []).append(bytes(message.payload))
            if message.topic == LOCAL_ALERTS:
                alert_times.append(time.perf_counter())

    with mosquitto() as broker:
        consumer = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        consumer.on_message = on_message
        subscribed = threading.Event()
        consumer.on_subscribe = lambda *_args: subscribed.set()
        # Subscribe once connected: a subscription asked for before the CONNACK is refused.
        consumer.on_connect = lambda client, *_args: client.subscribe(
            [(SENSOR_DATA, 1), (ANOMALIES, 1), (LOCAL_ALERTS, 1)]
        )
        consumer.connect("127.0.0.1", broker.port)
        consumer.loop_start()
        if not subscribed.wait(30):
            consumer.loop_stop()
            raise RuntimeError(
                f"the demo's cloud-side subscriber got no SUBACK from {broker.url} within 30 s"
            )
        config = BufferConfig(
            factory_id=factory,
            data_dir=context.work_dir / "edge",
            batch_linger_ms=200,
            health_interval_s=5,
            synchronous="NORMAL",
        )
        client_id = session_client_id(config.data_dir, "demo-sensor-buffer")
        buffer = SensorBuffer(config, MqttTransport(broker.url, None, client_id), context.catalog)
        buffer.start()
        try:
            time.sleep(0.5)  # the subscription is made on connect
            began = time.perf_counter()
            summary = publish(
                [columns],
                broker.url,
                malformed_rate=context.fleet.malformed_rate,
                seed=context.fleet.seed,
                client_id="demo-sensors",
            )
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while time.monotonic() < deadline:
                status = buffer.status()
                if (
                    status["queue"] == 0
                    and status["backlog_readings"] == 0
                    and status["anomalies_pending"] == 0
                    and status["readings_committed"] + status["quarantined"] > 0
                ):
                    break
                time.sleep(0.2)
            seconds = time.perf_counter() - began
            alert_latency_ms = _probe_alert(consumer, columns, alert_times, lock)
            time.sleep(0.5)  # the anomaly's upload to the cloud topic
        finally:
            buffer.stop()
            time.sleep(0.3)
            consumer.loop_stop()
            consumer.disconnect()
    status = buffer.last_status
    with lock:
        payloads = list(received[SENSOR_DATA])
    unique: dict[Any, int] = {}
    wire_bytes = 0
    for payload in payloads:
        batch = decode_batch(payload)
        if batch.batch_id not in unique:
            unique[batch.batch_id] = len(batch.columns)
            wire_bytes += len(payload)
    uploaded = sum(unique.values())
    return {
        "readings published": summary.readings,
        "malformed payloads published": summary.malformed,
        "readings buffered (committed, incl. 3 probe)": status.get("readings_committed", 0),
        "quarantined (malformed + sensor faults)": status.get("quarantined", 0),
        "readings uploaded (unique batches)": uploaded,
        "upload batches": len(unique),
        "wire bytes/reading": round(wire_bytes / max(uploaded, 1), 2),
        "threshold alerts (local)": len(received[LOCAL_ALERTS]),
        "local alert latency ms (probe)": alert_latency_ms,
        "anomalies sent to the cloud": len(received[ANOMALIES]),
        "backlog left": status.get("backlog_readings", 0),
        "seconds publish to drained": round(seconds, 2),
    }


def _probe_alert(
    client: Any, columns: Any, alert_times: list[float], lock: threading.Lock
) -> float | None:
    """Publish three readings above one temperature sensor's limit (the catalog's debounce);
    return the milliseconds from the third publish to the local alert's arrival."""
    import msgspec

    from iiot.contract import Reading

    key = next(k for k in columns.series if k.metric == "temperature")
    last = int(columns.timestamp.max())
    with lock:
        before = len(alert_times)
    sent = 0.0
    for step in range(1, 4):
        hot = Reading(
            timestamp=last + step * 1000,
            factory_id=key.factory_id,
            machine_id=key.machine_id,
            sensor_id=key.sensor_id,
            metric=key.metric,
            value=130.0 + step,
            unit=key.unit,
        )
        sent = time.perf_counter()
        client.publish(f"factory/{key.factory_id}/readings", msgspec.json.encode([hot]), qos=1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with lock:
            if len(alert_times) > before:
                return round((alert_times[before] - sent) * 1000, 1)
        time.sleep(0.001)
    return None
