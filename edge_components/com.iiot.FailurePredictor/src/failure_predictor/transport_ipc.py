"""Greengrass IPC transport: the only module of the component that imports `awsiot`.

Readings, confirmations and maintenance events arrive over local pub/sub; predictions, alerts
and shutdown requests leave over local pub/sub, anomalies also to IoT Core (QoS 1). The recipe's
accessControl lists exactly these topics.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import (
    QOS,
    BinaryMessage,
    PublishMessage,
    ReceiveMode,
    SubscriptionResponseMessage,
)

from failure_predictor.transport import MessageHandler

log = logging.getLogger(__name__)


def read_component_configuration() -> dict[str, Any]:
    """This component's configuration from the nucleus (deployment merged over defaults)."""
    client = GreengrassCoreIPCClientV2()
    try:
        response = client.get_configuration(key_path=[])
        return dict(json.loads(json.dumps(response.value)))
    finally:
        client.close()


class IpcTransport:
    def __init__(self) -> None:
        self._client: GreengrassCoreIPCClientV2 | None = None
        self._operations: list[Any] = []

    def start(self, topics: tuple[str, ...], on_message: MessageHandler) -> None:
        self._client = GreengrassCoreIPCClientV2()

        def on_event(event: SubscriptionResponseMessage) -> None:
            message = event.binary_message
            if message is not None:
                payload = message.message
                if isinstance(payload, str):
                    payload = payload.encode()
                on_message(message.context.topic if message.context else "", payload or b"")
            elif event.json_message is not None:
                context = event.json_message.context
                on_message(
                    context.topic if context else "",
                    json.dumps(event.json_message.message).encode(),
                )

        def on_error(error: Exception) -> bool:
            log.error("local subscription error", extra={"error": str(error)})
            return False  # keep the stream open

        for topic in topics:
            _, operation = self._client.subscribe_to_topic(
                topic=topic,
                receive_mode=ReceiveMode.RECEIVE_MESSAGES_FROM_OTHERS,
                on_stream_event=on_event,
                on_stream_error=on_error,
            )
            self._operations.append(operation)

    def publish_local(self, topic: str, payload: bytes) -> None:
        if self._client is not None:
            self._client.publish_to_topic_async(
                topic=topic,
                publish_message=PublishMessage(binary_message=BinaryMessage(message=payload)),
            )

    def publish_cloud(self, topic: str, payload: bytes) -> None:
        if self._client is not None:
            self._client.publish_to_iot_core_async(
                topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=payload
            )

    def stop(self) -> None:
        for operation in self._operations:
            try:
                operation.close()
            except Exception:
                log.debug("closing a subscription failed", exc_info=True)
        if self._client is not None:
            self._client.close()
