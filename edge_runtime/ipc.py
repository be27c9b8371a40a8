"""Greengrass IPC: the transport both components use on a gateway, and their configuration.

The tree's only module that imports `awsiot` (installed on gateways from the artifact's
requirements). Local pub/sub carries inputs in and alerts, status and predictions out; IoT Core
publishes are QoS 1, each future completing after IoT Core's PUBACK. Greengrass local pub/sub
has no deferred acknowledgement, so the handler's `ack` is None: a component that stores what
it receives is exposed for at most its own commit interval to a crash.

`read_component_configuration` reads the component's configuration; `ConfigurationWatch`
validates an update before the nucleus applies it (a bad one fails the deployment with the
reason) and reports applied ones. Each recipe's accessControl lists exactly the topics its
component uses.
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

from edge_runtime.transport import MessageHandler

log = logging.getLogger(__name__)


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


def _failed(error: BaseException) -> Future[None]:
    result: Future[None] = Future()
    result.set_exception(error)
    return result


def _completion(ipc_future: Future[Any]) -> Future[None]:
    """A future that completes (or fails) when the IPC operation's reply arrives, without its
    response object."""
    result: Future[None] = Future()

    def done(f: Future[Any]) -> None:
        error = f.exception()
        if error is None:
            result.set_result(None)
        else:
            result.set_exception(error)

    ipc_future.add_done_callback(done)
    return result


class IpcTransport:
    """One IPC client: subscriptions to local topics, local and IoT Core publishes.

    `client_factory` makes the IPC client when the transport starts (tests inject a fake).
    """

    def __init__(
        self, client_factory: Callable[[], GreengrassCoreIPCClientV2] = GreengrassCoreIPCClientV2
    ) -> None:
        self._client_factory = client_factory
        self._client: GreengrassCoreIPCClientV2 | None = None
        self._operations: list[Any] = []

    def start(self, topics: tuple[str, ...], on_message: MessageHandler) -> None:
        self._client = self._client_factory()

        def on_event(event: SubscriptionResponseMessage) -> None:
            message = message_of(event)
            if message is not None:
                on_message(*message, None)

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

    def publish_local_confirmed(self, topic: str, payload: bytes) -> Future[None]:
        """Publish on local pub/sub; the future completes with the nucleus's reply. Local
        pub/sub is not MQTT: the nucleus hands the message in memory to the components
        subscribed at that moment and keeps no queue or session, so the reply means only
        that it took the message (a subscriber that is not running never gets it)."""
        if self._client is None:
            return _failed(ConnectionError("IPC client not started"))
        return _completion(
            self._client.publish_to_topic_async(
                topic=topic,
                publish_message=PublishMessage(binary_message=BinaryMessage(message=payload)),
            )
        )

    def publish_cloud(self, topic: str, payload: bytes) -> Future[None]:
        """Publish at QoS 1; the future completes after IoT Core's PUBACK (or fails)."""
        if self._client is None:
            return _failed(ConnectionError("IPC client not started"))
        return _completion(
            self._client.publish_to_iot_core_async(
                topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=payload
            )
        )

    def stop(self) -> None:
        for operation in self._operations:
            try:
                operation.close()
            except Exception:
                log.debug("closing a subscription failed", exc_info=True)
        if self._client is not None:
            self._client.close()


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
