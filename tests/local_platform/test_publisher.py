import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from iiot.contract import Validator
from iiot.wire import validate_json
from local_platform.publisher import parse_broker, publish
from local_platform.simulator import FleetConfig, FleetSimulator


@pytest.mark.parametrize("bad", ["http://x:1", "127.0.0.1:1883", "mqtt://"])
def test_parse_broker_rejects_anything_but_mqtt_urls(bad):
    with pytest.raises(ValueError, match="mqtt://"):
        parse_broker(bad)


def test_parse_broker_defaults_the_port():
    assert parse_broker("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884)
    assert parse_broker("mqtt://localhost") == ("localhost", 1883)


def collect(broker, run):
    """Subscribe to every factory's readings topic, run `run()`, return what arrived."""
    received: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, message: received.append((message.topic, message.payload))
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.subscribe("factory/+/readings", qos=1)
        assert subscribed.wait(10)
        summary = run()
        deadline = time.monotonic() + 20
        while len(received) < summary.messages and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    return summary, received


def simulator(catalog, malformed_rate):
    config = FleetConfig(
        factories=2,
        machines_per_factory=2,
        hours=0.25,
        interval_ms=5000,
        malformed_rate=malformed_rate,
        seed=2,
    )
    return FleetSimulator(config, catalog)


def test_every_simulated_reading_arrives_once_on_its_factory_topic(broker, catalog):
    sim = simulator(catalog, 0.0)
    expected = sum(len(chunk) for chunk in sim.chunks())
    summary, received = collect(broker, lambda: publish(sim.chunks(), broker.url))
    assert summary.readings == expected
    assert len(received) == summary.messages
    assert {topic for topic, _ in received} == {"factory/F01/readings", "factory/F02/readings"}
    validator = Validator(catalog, clock=lambda: 2e9, check_range=False)
    outcomes = [validate_json(payload, validator) for _, payload in received]
    assert sum(o.accepted for o in outcomes) == expected
    assert not any(o.rejects for o in outcomes)
    for topic, payload in received[:20]:
        readings = validate_json(payload, validator).readings
        assert {f"factory/{r.factory_id}/readings" for r in readings} == {topic}
        assert len({r.machine_id for r in readings}) == 1


def test_malformed_payloads_are_mixed_in_and_rejected(broker, catalog):
    sim = simulator(catalog, 0.05)
    summary, received = collect(
        broker, lambda: publish(sim.chunks(), broker.url, malformed_rate=0.05, seed=3)
    )
    assert summary.malformed > 0
    validator = Validator(catalog, clock=lambda: 2e9, check_range=False)
    rejected_payloads = sum(
        bool(validate_json(payload, validator).rejects) for _, payload in received
    )
    assert rejected_payloads == summary.malformed
