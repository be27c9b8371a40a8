"""Plain MQTT transport (paho) for local runs against mosquitto, without Greengrass."""

from __future__ import annotations

from typing import Any

from failure_predictor.transport import MessageHandler


class MqttTransport:
    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        import paho.mqtt.client as mqtt

        self._client: Any = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)  # type: ignore[attr-defined]
        self._host, self._port = host, port

    def start(self, topics: tuple[str, ...], on_message: MessageHandler) -> None:
        def handle(_client: Any, _userdata: Any, message: Any) -> None:
            on_message(message.topic, bytes(message.payload))

        self._client.on_message = handle
        self._client.connect(self._host, self._port)
        for topic in topics:
            self._client.subscribe(topic, qos=1)
        self._client.loop_start()

    def publish_local(self, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=1)

    def publish_cloud(self, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=1)

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
