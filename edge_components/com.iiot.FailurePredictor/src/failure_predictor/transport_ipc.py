"""Greengrass IPC transport: the component's only way to Greengrass (`iiot.greengrass_ipc`).

Readings, confirmations and maintenance events arrive over local pub/sub; predictions, alerts
and shutdown requests leave over local pub/sub, anomalies also to IoT Core (QoS 1). The recipe's
accessControl lists exactly these topics.
"""

from __future__ import annotations

from failure_predictor.transport import MessageHandler
from iiot.greengrass_ipc import GreengrassIpc, read_component_configuration

__all__ = ["IpcTransport", "read_component_configuration"]


class IpcTransport:
    """The predictor's transport over the shared IPC client; anomalies go to IoT Core at QoS 1
    without waiting for the PUBACK (the predictor keeps no outbox)."""

    def __init__(self) -> None:
        self._ipc = GreengrassIpc()

    def start(self, topics: tuple[str, ...], on_message: MessageHandler) -> None:
        self._ipc.subscribe(topics, on_message)

    def publish_local(self, topic: str, payload: bytes) -> None:
        self._ipc.publish_local(topic, payload)

    def publish_cloud(self, topic: str, payload: bytes) -> None:
        self._ipc.publish_cloud(topic, payload)

    def stop(self) -> None:
        self._ipc.stop()
