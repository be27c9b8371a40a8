"""Greengrass IPC transport: the only module of the component that imports `awsiot`.

Local pub/sub (`SubscribeToTopic`, `PublishToTopic`) carries sensor payloads in and alerts and
status out; `PublishToIoTCore` at QoS 1 carries uploads and anomalies, its response arriving
after IoT Core's PUBACK. Greengrass local pub/sub has no deferred acknowledgement, so here a
payload is safe once committed (at most one commit interval is exposed to a crash).
The recipe's accessControl lists exactly the topics used here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import (
    QOS,
    BinaryMessage,
    ConfigurationUpdateEvents,
    ConfigurationValidityReport,
    ConfigurationValidityStatus,
    PublishMessage,
    ReceiveMode,
    SubscriptionResponseMessage,
    ValidateConfigurationUpdateEvents,
)

from sensor_buffer.transport import MessageHandler

log = logging.getLogger(__name__)


def read_component_configuration() -> dict[str, Any]:
    """This component's configuration from the nucleus (deployment merged over defaults)."""
    client = GreengrassCoreIPCClientV2()
    try:
        response = client.get_configuration(key_path=[])
        return dict(json.loads(json.dumps(response.value)))
    finally:
        client.close()


class ConfigurationWatch:
    """Validates configuration updates before the nucleus applies them, and reports changes.

    `validate(document)` returns None when the document is acceptable, else the reason (the
    deployment then fails with it); `on_change()` runs after an accepted update is applied.
    """

    def __init__(
        self,
        validate: Callable[[dict[str, Any]], str | None],
        on_change: Callable[[], None],
        client: GreengrassCoreIPCClientV2 | None = None,
    ) -> None:
        self._client = client or GreengrassCoreIPCClientV2()
        self._validate = validate
        self._on_change = on_change
        self._operations: list[Any] = []

    def start(self) -> None:
        _, validation = self._client.subscribe_to_validate_configuration_updates(
            on_stream_event=self._validation_event
        )
        _, updates = self._client.subscribe_to_configuration_update(
            key_path=[], on_stream_event=self._update_event
        )
        self._operations += [validation, updates]

    def _validation_event(self, event: ValidateConfigurationUpdateEvents) -> None:
        update = event.validate_configuration_update_event
        if update is None:
            return
        reason = self._validate(dict(update.configuration or {}))
        self._client.send_configuration_validity_report(
            configuration_validity_report=ConfigurationValidityReport(
                status=ConfigurationValidityStatus.ACCEPTED
                if reason is None
                else ConfigurationValidityStatus.REJECTED,
                deployment_id=update.deployment_id,
                message=reason or "valid",
            )
        )

    def _update_event(self, _event: ConfigurationUpdateEvents) -> None:
        self._on_change()

    def stop(self) -> None:
        for operation in self._operations:
            try:
                operation.close()
            except Exception:
                log.debug("closing a configuration subscription failed", exc_info=True)
        self._client.close()


class IpcTransport:
    def __init__(self) -> None:
        self._client: GreengrassCoreIPCClientV2 | None = None
        self._operations: list[Any] = []

    def start(self, topics: tuple[str, ...], on_message: MessageHandler) -> None:
        self._client = GreengrassCoreIPCClientV2()

        def on_event(event: SubscriptionResponseMessage) -> None:
            message = event.binary_message
            if message is None and event.json_message is not None:
                payload = json.dumps(event.json_message.message).encode()
                topic = event.json_message.context.topic if event.json_message.context else ""
            elif message is not None:
                payload = message.message if isinstance(message.message, bytes) else b""
                if isinstance(message.message, str):
                    payload = message.message.encode()
                topic = message.context.topic if message.context else ""
            else:
                return
            on_message(topic or "", payload, None)

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
