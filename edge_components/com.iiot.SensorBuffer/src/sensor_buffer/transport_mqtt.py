"""MQTT 5 transport (awscrt.mqtt5) for local runs and tests: the only module importing awscrt.

Two clients: one on the gateway's local broker (input topics, local alerts, status), one on the
"cloud" broker (AWS IoT Core in production; another or the same mosquitto locally). Inputs are
subscribed at QoS 1 with a persistent session and *manual* PUBACKs: a reading is acknowledged to
the local broker only after it is committed, so the broker redelivers whatever a crash
interrupted. Uploads are QoS 1; their PUBACK resolves the publish future.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlparse

from awscrt import mqtt5

from sensor_buffer.transport import MessageHandler

log = logging.getLogger(__name__)

_ACCEPTED = {
    mqtt5.PubackReasonCode.SUCCESS,
    # mosquitto says so when nothing subscribes yet; IoT Core's rules engine always takes it
    mqtt5.PubackReasonCode.NO_MATCHING_SUBSCRIBERS,
}


def parse_broker(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    if parsed.scheme != "mqtt" or not parsed.hostname:
        raise ValueError(f"broker URL {url!r} must look like mqtt://127.0.0.1:1883")
    return parsed.hostname, parsed.port or 1883


class _Client:
    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        on_publish: Any = None,
        persistent: bool = False,
        on_connected: Any = None,
    ) -> None:
        host, port = parse_broker(url)
        self.connected = threading.Event()
        self.stopping = False
        self._on_connected = on_connected
        connect = mqtt5.ConnectPacket(
            client_id=client_id,
            keep_alive_interval_sec=30,
            session_expiry_interval_sec=7 * 86_400 if persistent else 0,
            receive_maximum=1000,
        )
        self.client = mqtt5.Client(
            mqtt5.ClientOptions(
                host_name=host,
                port=port,
                connect_options=connect,
                session_behavior=(
                    mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS
                    if persistent
                    else mqtt5.ClientSessionBehaviorType.CLEAN
                ),
                offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
                retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.FULL,
                min_reconnect_delay_ms=200,
                max_reconnect_delay_ms=5_000,
                ack_timeout_sec=15,
                on_publish_callback_fn=on_publish,
                on_lifecycle_event_connection_success_fn=self._success,
                on_lifecycle_event_disconnection_fn=self._disconnected,
            )
        )

    def _success(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        self.connected.set()
        log.info("mqtt connected", extra={"session_present": data.connack_packet.session_present})
        if self._on_connected is not None:
            self._on_connected()

    def _disconnected(self, data: mqtt5.LifecycleDisconnectData) -> None:
        self.connected.clear()
        level = logging.INFO if self.stopping else logging.WARNING
        log.log(level, "mqtt disconnected", extra={"error": str(data.exception)})

    def publish(self, topic: str, payload: bytes, qos: mqtt5.QoS) -> Any:
        return self.client.publish(mqtt5.PublishPacket(topic=topic, payload=payload, qos=qos))


class MqttTransport:
    """Local broker in, local alerts out, cloud broker for uploads (QoS 1 with PUBACK)."""

    def __init__(self, broker: str, cloud_broker: str | None, client_id: str) -> None:
        self._broker = broker
        self._cloud_broker = cloud_broker or broker
        self._client_id = client_id
        self._local: _Client | None = None
        self._cloud: _Client | None = None
        self._topics: tuple[str, ...] = ()
        self._handler: MessageHandler | None = None

    def start(self, topics: tuple[str, ...], on_message: MessageHandler) -> None:
        self._topics = topics
        self._handler = on_message
        self._local = _Client(
            self._broker,
            f"{self._client_id}-in",
            on_publish=self._received,
            persistent=True,
            on_connected=self._subscribe,
        )
        self._cloud = _Client(self._cloud_broker, f"{self._client_id}-up")
        self._local.client.start()
        self._cloud.client.start()

    def _subscribe(self) -> None:
        assert self._local is not None
        # Subscribing on every connection is harmless with a resumed session and needed
        # without one (a broker restarted without persistence forgets subscriptions).
        self._local.client.subscribe(
            mqtt5.SubscribePacket(
                subscriptions=[mqtt5.Subscription(t, mqtt5.QoS.AT_LEAST_ONCE) for t in self._topics]
            )
        )

    def _received(self, data: mqtt5.PublishReceivedData) -> None:
        packet = data.publish_packet
        ack = None
        # Manual PUBACK control arrived in awscrt 0.2x; older releases acknowledge on return.
        acquire = getattr(data, "acquire_publish_acknowledgement_control", None)
        if packet.qos == mqtt5.QoS.AT_LEAST_ONCE and acquire is not None:
            handle = acquire()
            local = self._local

            def ack() -> None:
                if local is not None:
                    try:
                        local.client.invoke_publish_acknowledgement(handle)
                    except Exception:  # the connection that delivered it is gone: it redelivers
                        log.debug("late PUBACK dropped", exc_info=True)

        assert self._handler is not None
        self._handler(packet.topic, bytes(packet.payload or b""), ack)

    def publish_local(self, topic: str, payload: bytes) -> None:
        if self._local is not None:
            self._local.publish(topic, payload, mqtt5.QoS.AT_MOST_ONCE)

    def publish_cloud(self, topic: str, payload: bytes) -> Future[None]:
        result: Future[None] = Future()
        if self._cloud is None or not self._cloud.connected.is_set():
            result.set_exception(ConnectionError(f"not connected to {self._cloud_broker}"))
            return result
        crt_future = self._cloud.publish(topic, payload, mqtt5.QoS.AT_LEAST_ONCE)

        def done(f: Any) -> None:
            try:
                completion = f.result()
                code = completion.puback.reason_code if completion.puback else None
                if code is not None and code not in _ACCEPTED:
                    raise ConnectionError(f"PUBACK reason code {code!r}")
                result.set_result(None)
            except Exception as exc:
                result.set_exception(exc)

        crt_future.add_done_callback(done)
        return result

    def stop(self) -> None:
        for client in (self._local, self._cloud):
            if client is not None:
                client.stopping = True
                client.client.stop()
