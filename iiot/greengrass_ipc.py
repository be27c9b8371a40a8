"""Greengrass IPC for the gateway components: local pub/sub in, local and IoT Core publishes out.

The core's only module that imports `awsiot` (installed on gateways with the `edge` extra and
bundled with each component); each component's `transport_ipc` adapts it to its own transport
interface. `PublishToIoTCore` is QoS 1, and its future completes after IoT Core's PUBACK.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import (
    QOS,
    BinaryMessage,
    PublishMessage,
    ReceiveMode,
    SubscriptionResponseMessage,
)

log = logging.getLogger(__name__)

Received = Callable[[str, bytes], None]


def read_component_configuration() -> dict[str, Any]:
    """The calling component's configuration from the nucleus (deployment merged over
    defaults)."""
    client = GreengrassCoreIPCClientV2()
    try:
        response = client.get_configuration(key_path=[])
        return dict(json.loads(json.dumps(response.value)))
    finally:
        client.close()


def message_of(event: SubscriptionResponseMessage) -> tuple[str, bytes] | None:
    """(topic, payload) of a local pub/sub event; JSON messages come back as JSON bytes."""
    binary = event.binary_message
    if binary is not None:
        payload: Any = binary.message
        if isinstance(payload, str):
            payload = payload.encode()
        topic: str = (binary.context.topic if binary.context else "") or ""
        return topic, payload if isinstance(payload, bytes) else b""
    if event.json_message is not None:
        context = event.json_message.context
        json_topic: str = (context.topic if context else "") or ""
        return json_topic, json.dumps(event.json_message.message).encode()
    return None


class GreengrassIpc:
    """One IPC client: subscriptions to local topics, local and IoT Core publishes."""

    def __init__(self) -> None:
        self._client: GreengrassCoreIPCClientV2 | None = None
        self._operations: list[Any] = []

    def subscribe(self, topics: Iterable[str], on_message: Received) -> None:
        self._client = GreengrassCoreIPCClientV2()

        def on_event(event: SubscriptionResponseMessage) -> None:
            message = message_of(event)
            if message is not None:
                on_message(*message)

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

    def publish_cloud(self, topic: str, payload: bytes) -> Future[None]:
        """Publish at QoS 1; the future completes after IoT Core's PUBACK (or fails)."""
        result: Future[None] = Future()
        if self._client is None:
            result.set_exception(ConnectionError("IPC client not started"))
            return result
        ipc_future = self._client.publish_to_iot_core_async(
            topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=payload
        )

        def done(f: Future[Any]) -> None:
            error = f.exception()
            if error is None:
                result.set_result(None)
            else:
                result.set_exception(error)

        ipc_future.add_done_callback(done)
        return result

    def stop(self) -> None:
        for operation in self._operations:
            try:
                operation.close()
            except Exception:
                log.debug("closing a subscription failed", exc_info=True)
        if self._client is not None:
            self._client.close()
