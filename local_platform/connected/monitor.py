"""What the runner sees on each gateway's local bus: buffer health, predictions, local alerts.

One MQTT subscriber per factory broker (QoS 0, as the components publish there): the
SensorBuffer's status snapshots (the drain check), the FailurePredictor's predictions (counted
by model version: the hot swap is visible here) and the local alerts.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from iiot import topics


@dataclass
class FactoryView:
    factory: str
    status: dict[str, Any] = field(default_factory=dict)
    status_at: float = 0.0
    predictions: Counter[str] = field(default_factory=Counter)
    first_prediction: dict[str, float] = field(default_factory=dict)  # version -> wall time
    local_alerts: int = 0


class Monitor:
    def __init__(self, input_brokers: dict[str, int]) -> None:
        self.views = {factory: FactoryView(factory) for factory in input_brokers}
        self._brokers = input_brokers
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        for factory, port in self._brokers.items():
            view = self.views[factory]
            subscriptions = [
                (f"factory/{factory}/gateway/status", 0),
                (f"factory/{factory}/predictions", 0),
                (topics.LOCAL_ALERTS, 0),
            ]
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"runner-monitor-{factory}",
                protocol=mqtt.MQTTv5,
            )
            client.on_connect = lambda c, *_a, s=subscriptions: c.subscribe(s)
            client.on_message = lambda _c, _u, message, v=view: self._on_message(v, message)
            client.connect("127.0.0.1", port, keepalive=30)
            client.loop_start()
            self._clients.append(client)

    def _on_message(self, view: FactoryView, message: Any) -> None:
        topic: str = message.topic
        if topic.endswith("/predictions"):
            version = _field(message.payload, b'"model_version":"')
            with self._lock:
                view.predictions[version] += 1
                view.first_prediction.setdefault(version, time.time())
        elif topic.endswith("/gateway/status"):
            try:
                status = json.loads(message.payload)
            except ValueError:
                return
            with self._lock:
                view.status, view.status_at = status, time.time()
        elif topic == topics.LOCAL_ALERTS:
            with self._lock:
                view.local_alerts += 1

    def status(self, factory: str) -> tuple[dict[str, Any], float]:
        with self._lock:
            view = self.views[factory]
            return dict(view.status), view.status_at

    def predictions(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {f: dict(v.predictions) for f, v in self.views.items()}

    def stop(self) -> None:
        for client in self._clients:
            client.loop_stop()
            client.disconnect()


def _field(payload: bytes, prefix: bytes) -> str:
    """A string field of a compact JSON message, without decoding it all."""
    start = payload.find(prefix)
    if start < 0:
        return "?"
    start += len(prefix)
    end = payload.find(b'"', start)
    return payload[start:end].decode(errors="replace")
