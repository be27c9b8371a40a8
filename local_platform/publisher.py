"""Publish simulated readings to an MQTT broker at a target rate (the sensors' side of a plant).

The sensors' side is not AWS: it uses paho-mqtt, the usual MQTT client, over plain MQTT 5 to the
gateway's local broker. Messages are JSON lists of one machine's readings at one instant, with the
simulator's configured share of malformed payloads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlparse

import msgspec
import numpy as np

from iiot.contract import ReadingColumns
from iiot.topics import readings_topic
from local_platform.simulator import MALFORMED_KINDS, malform

log = logging.getLogger(__name__)


@dataclass
class PublishSummary:
    messages: int = 0
    readings: int = 0
    malformed: int = 0
    seconds: float = 0.0


def parse_broker(url: str) -> tuple[str, int]:
    """`mqtt://host:port` -> (host, port); only plain MQTT on a local broker."""
    parsed = urlparse(url)
    if parsed.scheme != "mqtt" or not parsed.hostname:
        raise ValueError(f"broker URL {url!r} must look like mqtt://127.0.0.1:1883")
    return parsed.hostname, parsed.port or 1883


def _messages(
    columns: ReadingColumns, malformed_rate: float, rng: np.random.Generator
) -> Iterable[tuple[str, bytes, int, bool]]:
    """(topic, payload, readings, malformed) per machine and instant, in time order."""
    readings = columns.to_readings()
    groups: dict[tuple[int, str], list[int]] = {}
    for position, reading in enumerate(readings):
        groups.setdefault((reading.timestamp, reading.machine_id), []).append(position)
    for (_, _machine), positions in sorted(groups.items()):
        first = readings[positions[0]]
        topic = readings_topic(first.factory_id)
        if malformed_rate and rng.random() < malformed_rate:
            kind = MALFORMED_KINDS[int(rng.integers(len(MALFORMED_KINDS)))]
            yield topic, malform(first, kind, rng), 1, True
            continue
        yield topic, msgspec.json.encode([readings[p] for p in positions]), len(positions), False


def publish(
    chunks: Iterable[ReadingColumns],
    broker: str,
    *,
    rate: float = 0.0,
    malformed_rate: float = 0.0,
    seed: int = 0,
    client_id: str = "iiot-simulator",
    on_message: Callable[[int], None] | None = None,
) -> PublishSummary:
    """Publish at QoS 1; `rate` caps readings per second (0 = as fast as the broker takes)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = parse_broker(broker)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    rng = np.random.default_rng([seed, 11])
    summary = PublishSummary()
    began = time.perf_counter()
    pending = []
    try:
        for columns in chunks:
            for topic, payload, count, broken in _messages(columns, malformed_rate, rng):
                pending.append(client.publish(topic, payload, qos=1))
                summary.messages += 1
                summary.readings += count
                summary.malformed += broken
                if on_message:
                    on_message(count)
                if len(pending) >= 500:
                    for info in pending:
                        info.wait_for_publish(timeout=30)
                    pending.clear()
                if rate > 0:
                    ahead = summary.readings / rate - (time.perf_counter() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        for info in pending:
            info.wait_for_publish(timeout=30)
    finally:
        client.loop_stop()
        client.disconnect()
    summary.seconds = time.perf_counter() - began
    log.info(
        "published",
        extra={"messages": summary.messages, "readings": summary.readings, "broker": broker},
    )
    return summary
