"""MQTT 5 transport (awscrt.mqtt5) for local runs and tests: the only module importing awscrt.

Both components use it outside Greengrass. Two clients: one on the gateway's local broker
(input topics, local alerts, status, predictions), one on the "cloud" broker (AWS IoT Core in
production; another or the same mosquitto locally). Inputs are subscribed at QoS 1 with
*manual* PUBACKs: a message is acknowledged to the local broker only when the component calls
its `ack` (the SensorBuffer after the commit), so the broker redelivers whatever a crash
interrupted. Cloud publishes are QoS 1; their PUBACK resolves the publish future. Local
publishes are QoS 0 (alerts, status), or QoS 1 with `publish_local_confirmed` (the
FailurePredictor's predictions, which the SensorBuffer stores).

With a persistent session (the SensorBuffer's), the input session is the component's: whoever
connects with its client id takes it over and receives (and acknowledges) the messages queued
for it. So the client id is not guessable (`session_client_id`: a prefix plus a random suffix
kept in the data directory, stable across restarts so the persistent session survives them),
and the transport authenticates (`MqttSecurity`: username and password, TLS with a CA file and
an optional client certificate; `mqtts://` URLs).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

from awscrt import io, mqtt5

from edge_runtime.transport import MessageHandler

log = logging.getLogger(__name__)

_ACCEPTED = {
    mqtt5.PubackReasonCode.SUCCESS,
    # mosquitto says so when nothing subscribes yet; IoT Core's rules engine always takes it
    mqtt5.PubackReasonCode.NO_MATCHING_SUBSCRIBERS,
}


_CLIENT_ID_FILE = "mqtt-client-id"


class BrokerAddress(NamedTuple):
    host: str
    port: int
    tls: bool


def parse_broker(url: str) -> BrokerAddress:
    """mqtt://host[:1883] (plain) or mqtts://host[:8883] (TLS)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise ValueError(
            f"broker URL {url!r} must look like mqtt://127.0.0.1:1883 or, with TLS, "
            "mqtts://127.0.0.1:8883"
        )
    tls = parsed.scheme == "mqtts"
    return BrokerAddress(parsed.hostname, parsed.port or (8883 if tls else 1883), tls)


@dataclass(frozen=True)
class MqttSecurity:
    """How a component proves who it is to a broker, and checks the broker's identity.

    `password` comes from a file or the environment, never from the command line; `ca_file`
    is the CA that signed the broker's certificate (TLS only, with an mqtts:// URL);
    `cert_file`/`key_file` a client certificate for brokers that require one.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def problems(self, address: BrokerAddress) -> list[str]:
        """What is wrong with these settings for a broker at `address` (empty: nothing)."""
        problems = []
        if self.password is not None and not self.username:
            problems.append("a password needs a username (--username)")
        if (self.cert_file is None) != (self.key_file is None):
            problems.append("a client certificate needs both --cert-file and --key-file")
        tls_files = [f for f in (self.ca_file, self.cert_file, self.key_file) if f is not None]
        if tls_files and not address.tls:
            problems.append(
                "--ca-file, --cert-file and --key-file need a TLS broker URL (mqtts://...)"
            )
        problems.extend(f"{f}: no such file" for f in tls_files if not f.is_file())
        return problems

    def tls_context(self) -> io.ClientTlsContext:
        if self.cert_file is not None and self.key_file is not None:
            options = io.TlsContextOptions.create_client_with_mtls_from_path(
                str(self.cert_file), str(self.key_file)
            )
        else:
            options = io.TlsContextOptions()
        if self.ca_file is not None:
            options.override_default_trust_store_from_path(None, str(self.ca_file))
        return io.ClientTlsContext(options)


def session_client_id(data_dir: Path, prefix: str) -> str:
    """`<prefix>-<random>`: the random part is made once and kept in the data directory, so
    the id survives restarts (the persistent session with it) but cannot be guessed by another
    client of the broker."""
    path = data_dir / _CLIENT_ID_FILE
    try:
        suffix = path.read_text().strip()
    except FileNotFoundError:
        suffix = ""
    if not suffix:
        suffix = secrets.token_hex(8)
        data_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(suffix + "\n")
        partial.replace(path)
    return f"{prefix}-{suffix}"


class _Client:
    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        security: MqttSecurity | None = None,
        on_publish: Any = None,
        persistent: bool = False,
        on_connected: Any = None,
    ) -> None:
        address = parse_broker(url)
        security = security or MqttSecurity()
        self.url = url
        self.connected = threading.Event()
        self.stopping = False
        self._on_connected = on_connected
        connect = mqtt5.ConnectPacket(
            client_id=client_id,
            username=security.username,
            password=security.password,
            keep_alive_interval_sec=30,
            session_expiry_interval_sec=7 * 86_400 if persistent else 0,
            receive_maximum=1000,
        )
        self.client = mqtt5.Client(
            mqtt5.ClientOptions(
                host_name=address.host,
                port=address.port,
                tls_ctx=security.tls_context() if address.tls else None,
                # The IoT SDK metrics would be appended to the username, which a broker
                # checking a password file refuses.
                disable_metrics=True,
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
                on_lifecycle_event_connection_failure_fn=self._failed,
                on_lifecycle_event_disconnection_fn=self._disconnected,
            )
        )

    def _success(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        self.connected.set()
        log.info("mqtt connected", extra={"session_present": data.connack_packet.session_present})
        if self._on_connected is not None:
            self._on_connected()

    def _failed(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        code = data.connack_packet.reason_code if data.connack_packet else None
        log.warning(
            "mqtt connection refused or failed; check the broker URL, --username and the "
            "password, and the TLS files",
            extra={"broker": self.url, "reason_code": str(code), "error": str(data.exception)},
        )

    def _disconnected(self, data: mqtt5.LifecycleDisconnectData) -> None:
        self.connected.clear()
        level = logging.INFO if self.stopping else logging.WARNING
        log.log(level, "mqtt disconnected", extra={"error": str(data.exception)})

    def publish(self, topic: str, payload: bytes, qos: mqtt5.QoS) -> Any:
        return self.client.publish(mqtt5.PublishPacket(topic=topic, payload=payload, qos=qos))


class MqttTransport:
    """Local broker in, local publishes out, cloud broker for QoS 1 publishes with PUBACK."""

    def __init__(
        self,
        broker: str,
        cloud_broker: str | None,
        client_id: str,
        *,
        security: MqttSecurity | None = None,
        cloud_security: MqttSecurity | None = None,
        persistent_session: bool = True,
    ) -> None:
        """`client_id` is the prefix of both clients' ids (see `session_client_id`); the cloud
        client uses `security` too when there is no separate `cloud_broker`. Without
        `persistent_session` the input session starts clean and ends with the connection."""
        self._broker = broker
        self._cloud_broker = cloud_broker or broker
        self._client_id = client_id
        self._security = security
        self._cloud_security = cloud_security if cloud_broker else security
        self._persistent = persistent_session
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
            security=self._security,
            on_publish=self._received,
            persistent=self._persistent,
            on_connected=self._subscribe,
        )
        self._cloud = _Client(
            self._cloud_broker, f"{self._client_id}-up", security=self._cloud_security
        )
        self._local.client.start()
        self._cloud.client.start()

    def _subscribe(self) -> None:
        assert self._local is not None
        if not self._topics:  # a publisher only (the OPC UA collector): nothing to subscribe
            return
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

    def publish_local_confirmed(self, topic: str, payload: bytes) -> Future[None]:
        """QoS 1 on the local broker; the future resolves on its PUBACK (the broker then keeps
        the message for every subscriber's session, a persistent one across that subscriber's
        restart, until the subscriber acknowledges it)."""
        return _qos1(self._local, self._broker, topic, payload)

    def publish_cloud(self, topic: str, payload: bytes) -> Future[None]:
        return _qos1(self._cloud, self._cloud_broker, topic, payload)

    def stop(self) -> None:
        for client in (self._local, self._cloud):
            if client is not None:
                client.stopping = True
                client.client.stop()


def _qos1(client: _Client | None, url: str, topic: str, payload: bytes) -> Future[None]:
    """A QoS 1 publish whose future resolves on an accepting PUBACK and fails otherwise (not
    connected, refused, the connection lost before the PUBACK)."""
    result: Future[None] = Future()
    if client is None or not client.connected.is_set():
        result.set_exception(ConnectionError(f"not connected to {url}"))
        return result
    crt_future = client.publish(topic, payload, mqtt5.QoS.AT_LEAST_ONCE)

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
