"""Bad anomalies and the shared poison corpus (`tests/poison.py`) through the alert router.

Each anomaly is handled on its own: in a record that mixes good and bad anomalies the good
ones are alerted and each bad one is dead-lettered with its index and reason. No payload of
the corpus crashes the router or holds back the records after it; payloads over the limits are
refused before parsing (the JSON bombs within an address-space limit).
"""

from __future__ import annotations

import base64
import json
import time

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iiot.anomaly import Anomaly, encode_anomaly
from lambdas.alert_router import handler
from lambdas.alert_router.repository import InMemoryCooldownStore, RecordingNotifier
from lambdas.alert_router.service import AlertService, AnomalyRouter, RoutingFailedError
from lambdas.shared.dead_letter import RecordingDeadLetter
from lambdas.shared.idempotency import InMemoryOnce
from tests.poison import known_poisons, poison_payloads, run_limited

from .conftest import drain, kinesis_event
from .router_data import MINUTE, T0, anomaly

NOW_MS = int(time.time() * 1000)

# Poisons refused by the integrity checks themselves, so their reason is the corpus's own.
INTEGRITY_POISONS = {
    "invalid UTF-8 inside a string",
    "invalid UTF-8 after a valid prefix",
    "list nested 1,000 deep",
    "object nested 1,000 deep",
    "a list of 4M numbers (8 MB)",
    "a list of 200K numbers under the byte limit",
}

BAD_ITEMS: list[tuple[object, str]] = [  # (item, what its reason says)
    ({"machine_id": "F01-M003"}, "Object missing required field"),
    ({**json.loads(encode_anomaly(anomaly())), "value": "hot"}, "Expected `float`, got `str`"),
    ({**json.loads(encode_anomaly(anomaly())), "severity": "PANIC"}, "Invalid enum value"),
    ("not an anomaly", "Expected `object`, got `str`"),
    (None, "Expected `object`, got `null`"),
    ([1, 2], "Expected `object`, got `array`"),
]


def mixed_record() -> tuple[bytes, list[Anomaly]]:
    """Five items: three good anomalies (two machines, one CRITICAL) and two bad ones."""
    good = [
        anomaly(),
        anomaly(machine_id="F01-M004", timestamp=T0 + MINUTE),
        anomaly(machine_id="F01-M005", severity="CRITICAL", value=131.0, threshold=120.0),
    ]
    items = [
        json.loads(encode_anomaly(good[0])),
        BAD_ITEMS[0][0],
        json.loads(encode_anomaly(good[1])),
        BAD_ITEMS[1][0],
        json.loads(encode_anomaly(good[2])),
    ]
    return json.dumps(items).encode(), good


def test_a_record_with_good_and_bad_anomalies_routes_the_good_ones(router, lambda_context):
    payload, good = mixed_record()
    event = kinesis_event([payload], first_sequence=7)
    assert handler.handler(event, lambda_context) == {"batchItemFailures": []}

    alerts = drain(router["alerts"])
    assert sorted(a["Message"].rsplit("Anomaly id: ", 1)[1] for a in alerts) == sorted(
        a.anomaly_id for a in good
    )
    (escalated,) = drain(router["escalation"])
    assert escalated["Subject"].startswith("[CRITICAL] F01/F01-M005")
    dead = sorted(drain(router["dead_letters"]), key=lambda d: d["origin"]["anomaly_index"])
    assert [d["origin"] for d in dead] == [
        {"sequence_number": "7", "source": "kinesis", "anomaly_index": "1"},
        {"sequence_number": "7", "source": "kinesis", "anomaly_index": "3"},
    ]
    assert dead[0]["reason"].startswith("anomaly 1 of 5: not an anomaly message: ")
    assert BAD_ITEMS[0][1] in dead[0]["reason"]
    assert dead[1]["reason"].startswith("anomaly 3 of 5: not an anomaly message: ")
    assert BAD_ITEMS[1][1] in dead[1]["reason"]
    # each dead letter keeps only its own item, not the good anomalies around it
    assert json.loads(base64.b64decode(dead[0]["payload_base64"])) == BAD_ITEMS[0][0]

    # redelivered: the good anomalies are not alerted twice
    assert handler.handler(event, lambda_context) == {"batchItemFailures": []}
    assert drain(router["alerts"]) == []
    assert drain(router["escalation"]) == []


def test_an_iot_message_list_with_a_bad_item_routes_the_good_ones(router, lambda_context):
    message = [
        BAD_ITEMS[3][0],
        json.loads(encode_anomaly(anomaly(source="edge", anomaly_type="THRESHOLD_HIGH"))),
    ]
    assert handler.handler(message, lambda_context) == {"decisions": ["sent"], "dead_lettered": 1}
    assert len(drain(router["alerts"])) == 1
    (dead,) = drain(router["dead_letters"])
    assert dead["origin"] == {"source": "iot", "anomaly_index": "0"}
    assert dead["reason"].startswith("anomaly 0 of 2: not an anomaly message: ")
    assert BAD_ITEMS[3][1] in dead["reason"]


def test_the_poison_corpus_never_stops_the_router(router, lambda_context):
    poisons = known_poisons(NOW_MS)
    after = anomaly(machine_id="F01-M009")
    event = kinesis_event([p.payload for p in poisons] + [encode_anomaly(after)])
    assert handler.handler(event, lambda_context) == {"batchItemFailures": []}

    (alert,) = drain(router["alerts"])
    assert alert["MessageAttributes"]["machine_id"]["Value"] == "F01-M009"
    dead = drain(router["dead_letters"])
    by_record: dict[int, list[str]] = {}
    for letter in dead:
        by_record.setdefault(int(letter["origin"]["sequence_number"]), []).append(letter["reason"])
    assert set(by_record) == set(range(1, len(poisons) + 1))  # each poison, nothing else
    for sequence, poison in enumerate(poisons, start=1):
        reasons = by_record[sequence]
        assert all("not an anomaly message: " in reason for reason in reasons), reasons
        if poison.name in INTEGRITY_POISONS:
            assert any(poison.reason in reason for reason in reasons), (poison.name, reasons)


# ------------------------------------------------------------------- the service, no AWS


def in_memory_router() -> tuple[AnomalyRouter, RecordingNotifier, list[dict]]:
    alerts, dead = RecordingNotifier(), RecordingDeadLetter()
    service = AlertService(
        cooldown_store=InMemoryCooldownStore(),
        alerts=alerts,
        escalation=RecordingNotifier(),
        cooldown_seconds=900,
    )
    return AnomalyRouter(service=service, dead_letter=dead, once=InMemoryOnce()), alerts, dead.sent


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.sampled_from(range(len(BAD_ITEMS)))), min_size=1, max_size=40)
)
def test_each_anomaly_is_routed_or_refused_on_its_own(layout):
    """`layout`: None is a good anomaly (each on a machine of its own), an int a bad item."""
    items = [
        json.loads(encode_anomaly(anomaly(machine_id=f"F01-M{i:03d}")))
        if kind is None
        else BAD_ITEMS[kind][0]
        for i, kind in enumerate(layout)
    ]
    router, alerts, dead = in_memory_router()
    outcome = router.route_payload(json.dumps(items).encode(), {"n": "1"})
    good = [i for i, kind in enumerate(layout) if kind is None]
    assert outcome.decisions == ["sent"] * len(good)
    assert [n.attributes["machine_id"] for n in alerts.sent] == [f"F01-M{i:03d}" for i in good]
    bad = {i: BAD_ITEMS[kind][1] for i, kind in enumerate(layout) if kind is not None}
    assert {int(d["origin"]["anomaly_index"]): d["reason"] for d in dead}.keys() == bad.keys()
    for letter in dead:
        assert bad[int(letter["origin"]["anomaly_index"])] in letter["reason"]


class FlakyNotifier(RecordingNotifier):
    """Fails its first `failures` publishes (SNS down), then records."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def publish(self, notification) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("SNS unavailable")
        super().publish(notification)


def test_an_anomaly_that_cannot_be_sent_holds_back_none_of_the_others():
    alerts, escalation, dead = RecordingNotifier(), FlakyNotifier(failures=1), RecordingDeadLetter()
    service = AlertService(
        cooldown_store=InMemoryCooldownStore(),
        alerts=alerts,
        escalation=escalation,
        cooldown_seconds=900,
    )
    router = AnomalyRouter(service=service, dead_letter=dead, once=InMemoryOnce())
    critical = anomaly(machine_id="F01-M001", severity="CRITICAL", value=130.0, threshold=120.0)
    warning = anomaly(machine_id="F01-M002")
    payload = b"[" + encode_anomaly(critical) + b"," + encode_anomaly(warning) + b"]"
    with pytest.raises(RoutingFailedError, match="1 of 2 anomalies not routed"):
        router.route_payload(payload, {"n": "1"})
    assert [n.attributes["machine_id"] for n in alerts.sent] == ["F01-M001", "F01-M002"]
    retried = router.route_payload(payload, {"n": "1"})  # Lambda retries the record
    assert [(r.decision, r.duplicate) for r in retried.routed] == [
        ("escalated", False),
        ("sent", True),
    ]
    assert [n.attributes["machine_id"] for n in escalation.sent] == ["F01-M001"]
    assert dead.sent == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(poison_payloads(NOW_MS))
def test_no_hostile_payload_makes_the_router_raise(payload):
    router, _, dead = in_memory_router()
    outcome = router.route_payload(payload, {"n": "1"})
    if not outcome.invalid:
        assert msgspec.json.decode(payload) == [] or outcome.routed
    assert len(dead) == len(outcome.invalid)
    assert all(letter["reason"] for letter in dead)
    after = router.route_payload(encode_anomaly(anomaly(machine_id="F01-M777")), {"n": "2"})
    assert after.decisions == ["sent"]


@pytest.mark.slow
def test_bombs_are_refused_by_the_router_within_an_address_space_limit():
    """Every bomb of the corpus as an anomaly payload, in a fresh interpreter limited to 320 MB
    of address space: each is refused before parsing, and a good anomaly after still routes."""
    result = run_limited(
        """
        import time
        from lambdas.alert_router.repository import InMemoryCooldownStore, RecordingNotifier
        from lambdas.alert_router.service import AlertService, AnomalyRouter, RoutingFailedError
        from lambdas.shared.dead_letter import RecordingDeadLetter
        from tests.poison import bombs
        from tests.lambdas.router_data import anomaly
        from iiot.anomaly import encode_anomaly

        dead = RecordingDeadLetter()
        service = AlertService(cooldown_store=InMemoryCooldownStore(), alerts=RecordingNotifier(),
                               escalation=RecordingNotifier(), cooldown_seconds=900)
        router = AnomalyRouter(service=service, dead_letter=dead)
        for n, poison in enumerate(bombs(int(time.time() * 1000))):
            outcome = router.route_payload(poison.payload, {"n": str(n)})
            assert not outcome.routed and len(outcome.invalid) == 1, poison.name
            assert outcome.invalid[0].index is None, poison.name
            print("refused:", poison.name, "|", outcome.invalid[0].reason[:80])
        assert router.route_payload(encode_anomaly(anomaly()), {}).decisions == ["sent"]
        """,
        address_space_mb=320,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("refused:") == 5
