"""Greengrass IPC transport: the only module of the component that imports `awsiot`.

Local pub/sub carries sensor payloads in and alerts and status out; IoT Core publishes at QoS 1
carry uploads and anomalies, each future completing after IoT Core's PUBACK (the shared client
is `iiot.greengrass_ipc`; configuration validation is this component's own). Greengrass local
pub/sub has no deferred acknowledgement, so here a payload is safe once committed (at most one
commit interval is exposed to a crash).
The recipe's accessControl lists exactly the topics used here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import (
    ConfigurationUpdateEvents,
    ConfigurationValidityReport,
    ConfigurationValidityStatus,
    ValidateConfigurationUpdateEvents,
)

from iiot.greengrass_ipc import GreengrassIpc, read_component_configuration
from sensor_buffer.transport import MessageHandler

__all__ = ["ConfigurationWatch", "IpcTransport", "read_component_configuration"]

log = logging.getLogger(__name__)


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


class IpcTransport(GreengrassIpc):
    """The buffer's transport: local pub/sub has no deferred acknowledgement (None)."""

    def start(self, topics: tuple[str, ...], on_message: MessageHandler) -> None:
        self.subscribe(topics, lambda topic, payload: on_message(topic, payload, None))
