"""The IoT rules: what IoT Core does with the gateways' messages (`stacks/iot_stack.py`).

`python -m local_platform.connected.ingress --plan PLAN` subscribes to the "cloud" broker and
runs each rule's action:

* TelemetryRule (`SELECT * FROM 'factory/sensor/data'`): the compact batch, unchanged, into the
  telemetry stream with a random partition key (`${newuuid()}`);
* AnomalyRule (`SELECT * FROM 'factory/anomalies'`): the anomaly into the anomaly stream,
  partitioned by `${factory_id}/${machine_id}`;
* MaintenanceRule (`stacks/alerting_stack.py`: `SELECT factory_id, machine_id, completed_at_ms,
  started_at_ms, maintenance_id, kind, floor(completed_at_ms / 1000) + 30 days AS expires_at
  FROM 'factory/+/maintenance' WHERE factory_id = topic(2)`, the deployed topic's level 4): a
  completed maintenance job into the machine state table (DynamoDBv2 PutItem), where the alert
  router learns when a machine returned to service.

A failed action is logged as the rule's error action would (`errors` in the status); IoT Core
does not retry rule actions, and neither does this. The broker's PUBACK to a gateway does not
wait for the action, as on IoT Core.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from iiot import topics
from iiot.wire import announced_readings, is_batch
from local_platform.connected.kinesis import client
from local_platform.connected.plan import ANOMALY_STREAM, TELEMETRY_STREAM, Plan, Topology
from local_platform.connected.service import Service

log = logging.getLogger(__name__)

MAINTENANCE_FILTER = "factory/+/maintenance"
# The maintenance rule's SELECT (stacks/alerting_stack.py) and its TTL: a job stays 30 days.
MAINTENANCE_FIELDS = (
    "factory_id",
    "machine_id",
    "completed_at_ms",
    "started_at_ms",
    "maintenance_id",
    "kind",
)
MACHINE_STATE_RETENTION_S = 30 * 86_400


def machine_state_item(topic: str, payload: bytes) -> dict[str, dict[str, str]] | None:
    """The item the maintenance rule puts for one message, or None when its WHERE clause
    (`factory_id = topic(...)`: only the topic's own factory) lets it pass by. JSON strings
    become S and numbers N, as the DynamoDBv2 action writes them; a field the message lacks is
    left out (a missing key then fails the PutItem: the rule's error action)."""
    try:
        document = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(document, dict) or document.get("factory_id") != topic.split("/")[1]:
        return None
    item: dict[str, dict[str, str]] = {}
    for name in MAINTENANCE_FIELDS:
        value = document.get(name)
        if isinstance(value, str):
            item[name] = {"S": value}
        elif isinstance(value, int | float) and not isinstance(value, bool):
            item[name] = {"N": str(value)}
    completed = document.get("completed_at_ms")
    if isinstance(completed, int | float) and not isinstance(completed, bool):
        item["expires_at"] = {"N": str(int(completed // 1000) + MACHINE_STATE_RETENTION_S)}
    return item


def partition_key_of_anomaly(payload: bytes) -> str:
    """`${factory_id}/${machine_id}` of a JSON anomaly (IoT SQL substitutes empty strings for
    a payload that is not JSON or lacks the fields)."""
    try:
        document = json.loads(payload)
    except ValueError:
        return "/"
    if not isinstance(document, dict):
        return "/"
    return f"{document.get('factory_id', '')}/{document.get('machine_id', '')}"


def main(argv: list[str] | None = None) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from iiot import logs

    parser = argparse.ArgumentParser(description="IoT rules: cloud broker -> Kinesis")
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument(
        "--machine-state-table", help="the maintenance rule's table (without: no such rule)"
    )
    args = parser.parse_args(argv)
    logs.configure("INFO")
    plan = Plan.read(args.plan)
    topology = Topology.read(plan.run_dir)
    service = Service(plan.status_dir / "ingress.json")
    kinesis = client("kinesis")
    dynamodb = client("dynamodb") if args.machine_state_table else None
    inbox: queue.Queue[tuple[str, bytes, float]] = queue.Queue()
    counters: dict[str, Any] = {
        "telemetry_messages": 0,
        "telemetry_bytes": 0,
        "telemetry_readings": 0,
        "anomaly_messages": 0,
        "maintenance_messages": 0,
        "maintenance_put": 0,
        "other_messages": 0,
        "put_ok": 0,
        "errors": 0,
        "last_message": 0.0,
        "subscribed": False,
    }
    service.counters = counters
    subscribed = threading.Event()

    def on_connect(mqtt_client: Any, *_args: Any) -> None:
        subscriptions = [(topics.SENSOR_DATA, 1), (topics.ANOMALIES, 1)]
        if dynamodb is not None:
            subscriptions.append((MAINTENANCE_FILTER, 1))
        mqtt_client.subscribe(subscriptions)

    def on_subscribe(*_args: Any) -> None:
        subscribed.set()
        counters["subscribed"] = True

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        inbox.put((message.topic, bytes(message.payload), time.time()))

    subscriber = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id="iot-rules",
        protocol=mqtt.MQTTv5,
    )
    subscriber.on_connect = on_connect
    subscriber.on_subscribe = on_subscribe
    subscriber.on_message = on_message
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    subscriber.connect("127.0.0.1", topology.cloud_broker, clean_start=False, properties=properties)
    subscriber.loop_start()

    def step() -> float:
        try:
            topic, payload, _arrived = inbox.get(timeout=0.2)
        except queue.Empty:
            return 0.0
        counters["last_message"] = time.time()
        try:
            if topic == topics.SENSOR_DATA:
                counters["telemetry_messages"] += 1
                counters["telemetry_bytes"] += len(payload)
                if is_batch(payload):
                    counters["telemetry_readings"] += announced_readings(payload)
                kinesis.put_record(
                    StreamName=TELEMETRY_STREAM, Data=payload, PartitionKey=str(uuid.uuid4())
                )
            elif topic == topics.ANOMALIES:
                counters["anomaly_messages"] += 1
                kinesis.put_record(
                    StreamName=ANOMALY_STREAM,
                    Data=payload,
                    PartitionKey=partition_key_of_anomaly(payload),
                )
            elif dynamodb is not None and topic.endswith("/maintenance"):
                counters["maintenance_messages"] += 1
                item = machine_state_item(topic, payload)
                if item is None:
                    return 0.0
                dynamodb.put_item(TableName=args.machine_state_table, Item=item)
                counters["maintenance_put"] += 1
            else:
                counters["other_messages"] += 1
                return 0.0
            counters["put_ok"] += 1
        except Exception as exc:  # the rule's error action: log and go on
            counters["errors"] += 1
            log.error("rule action failed", extra={"topic": topic, "error": str(exc)})
        return 0.0

    def stop() -> None:
        subscriber.loop_stop()
        subscriber.disconnect()

    service.run(step, on_stop=stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
