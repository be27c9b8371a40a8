"""The shared poison corpus (`tests/poison.py`) through the InfluxDB writer.

End to end: the real handler (moto for Secrets Manager, SQS and DynamoDB idempotency) writes
through `influxdb-client`'s v2 API into a real InfluxDB (Debian's 1.6 behind a v2 write relay),
read back with InfluxQL. Every good reading lands exactly once, every poison is dead-lettered
with its reason, a damaged copy sent first never shadows the good one, a reused batch id with
other readings is refused, and the handler keeps going. The bombs run through the service in a
subprocess under an address-space limit.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iiot.contract import Validator
from iiot.wire import read_header
from lambdas.influx_writer import handler
from lambdas.influx_writer.repository import RecordingDeadLetter
from lambdas.influx_writer.service import InfluxWriterService
from lambdas.shared.idempotency import InMemoryOnce
from local_platform.connected.influxd import V2WriteRelay
from tests.poison import (
    HOUR_MS,
    Poison,
    build_stream,
    good_batch,
    good_json,
    good_readings,
    keys_of,
    poison_payloads,
    reused_id,
    run_limited,
    shadow_copies,
    zstd_bomb,
)

from .conftest import create_queue, create_table, drain, kinesis_event, unique

NOW_MS = int(time.time() * 1000)
FIRST_SEQUENCE = 1000


def written_keys(lines: list[str]) -> list[tuple[str, int]]:
    """(sensor_id, timestamp) of each line-protocol line."""
    keys = []
    for line in lines:
        head, _field, timestamp = line.rsplit(" ", 2)
        tags = dict(tag.split("=", 1) for tag in head.split(",")[1:])
        keys.append((tags["sensor_id"], int(timestamp)))
    return keys


@pytest.fixture
def influx(aws, monkeypatch, influxd) -> Iterator[dict]:
    """The writer's environment against the real server: a database of its own per test."""
    database = f"poison_{uuid.uuid4().hex[:8]}"
    influxd.query(f'CREATE DATABASE "{database}"')
    relay = V2WriteRelay(influxd.url)
    secret = boto3.client("secretsmanager").create_secret(
        Name=unique("influx"), SecretString=json.dumps({"token": "t"})
    )["ARN"]
    idempotency = unique("idempotency")
    create_table(idempotency, "id")
    dead_letters = create_queue(unique("writer-dlq"))
    for name, value in {
        "INFLUXDB_URL": relay.url,
        "INFLUXDB_ORG": "iiot",
        "INFLUXDB_BUCKET": database,
        "INFLUXDB_SECRET_ARN": secret,
        "IDEMPOTENCY_TABLE": idempotency,
        "DEAD_LETTER_QUEUE_URL": dead_letters,
    }.items():
        monkeypatch.setenv(name, value)
    try:
        yield {"relay": relay, "database": database, "dead_letters": dead_letters}
    finally:
        relay.close()


def stored_keys(influxd, database: str) -> list[tuple[str, int]]:
    series = influxd.query("SELECT value, sensor_id FROM temperature", database)
    return [(sensor, t) for s in series for t, _value, sensor in s["values"]]


@pytest.mark.slow
def test_the_poison_corpus_through_the_handler_into_influxdb(influx, influxd, lambda_context):
    stream = build_stream(NOW_MS)
    event = kinesis_event(stream.payloads, first_sequence=FIRST_SEQUENCE)
    assert handler.handler(event, lambda_context) == {"batchItemFailures": []}

    # every good reading written exactly once, nothing else (not the reused id's readings)
    written = Counter(written_keys(influx["relay"].lines))
    assert set(written) == stream.good
    assert set(written.values()) == {1}
    stored = stored_keys(influxd, influx["database"])
    assert sorted(stored) == sorted(stream.good)

    # every poison dead-lettered under its own record, with its reason; no good record is
    dead = drain(influx["dead_letters"])
    reasons_by_record: dict[str, list[str]] = defaultdict(list)
    for letter in dead:
        reasons_by_record[letter["origin"]["sequence_number"]].append(letter["reason"])
    poisoned = {str(FIRST_SEQUENCE + position): poison for position, poison in stream.poisons}
    assert set(reasons_by_record) == set(poisoned)
    for sequence, poison in poisoned.items():
        reasons = reasons_by_record[sequence]
        assert any(poison.reason in reason for reason in reasons), (poison.name, reasons)
    every_reason = [letter["reason"] for letter in dead]
    for expected in stream.expected_reasons():
        assert any(expected in reason for reason in every_reason), expected
    assert any(r.startswith("batch_id reused with different content") for r in every_reason)

    # a Lambda retry of the whole batch: nothing written twice, nothing dead-lettered twice
    lines_before = len(influx["relay"].lines)
    assert handler.handler(event, lambda_context) == {"batchItemFailures": []}
    assert len(influx["relay"].lines) == lines_before
    assert drain(influx["dead_letters"]) == []

    # and it keeps going
    later = good_readings(7, start_ms=NOW_MS - HOUR_MS, sensor=60)
    assert handler.handler(kinesis_event([good_batch(later)]), lambda_context) == {
        "batchItemFailures": []
    }
    assert keys_of(later) <= set(stored_keys(influxd, influx["database"]))


def copies_that_pass_the_header_checks(payload: bytes) -> list[Poison]:
    """Copies under the good batch's id that only decoding refuses (the header, size and CRC
    are intact): a dead-lettered one must not record the good batch's key either."""
    header = read_header(payload)
    miscounted = payload[:24] + (header.readings + 1).to_bytes(4, "little") + payload[28:]
    bomb = zstd_bomb(40_000_000, content_size=False)
    bomb = bomb[:8] + header.batch_id.bytes + bomb[24:]  # the header is outside the CRC
    return [
        Poison("shadow: counts disagree", miscounted, "counts add up"),
        Poison(
            "shadow: zstd bomb without a size",
            bomb,
            "does not record its decompressed size",
            bomb=True,
        ),
    ]


@pytest.mark.slow
def test_a_damaged_copy_first_never_shadows_the_good_one(influx, influxd, lambda_context):
    """The issue's reproduction: a damaged copy in one invocation, the good re-send with the
    same batch id in the next (0 of 20 points were written, reported as success)."""
    for n in range(4):
        readings = good_readings(20, start_ms=NOW_MS - HOUR_MS, sensor=70 + n)
        payload = good_batch(readings)
        shadow = (shadow_copies(payload) + copies_that_pass_the_header_checks(payload))[n]
        assert read_header(shadow.payload).batch_id == read_header(payload).batch_id
        first = kinesis_event([shadow.payload], first_sequence=10 * n)
        assert handler.handler(first, lambda_context) == {"batchItemFailures": []}
        (letter,) = drain(influx["dead_letters"])
        assert shadow.reason in letter["reason"], shadow.name

        second = kinesis_event([payload], first_sequence=10 * n + 1)
        assert handler.handler(second, lambda_context) == {"batchItemFailures": []}
        stored = stored_keys(influxd, influx["database"])
        assert keys_of(readings) <= set(stored), shadow.name
        assert drain(influx["dead_letters"]) == []


@pytest.mark.slow
def test_a_reused_batch_id_is_refused_and_an_exact_resend_is_a_duplicate(
    influx, influxd, lambda_context
):
    batch_id = uuid.UUID(int=42)
    readings = good_readings(10, start_ms=NOW_MS - HOUR_MS, sensor=80)
    payload = good_batch(readings, batch_id=batch_id)
    other = reused_id(batch_id, good_readings(4, start_ms=NOW_MS - HOUR_MS, sensor=81))
    event = kinesis_event([payload, other.payload, payload], first_sequence=20)
    assert handler.handler(event, lambda_context) == {"batchItemFailures": []}

    assert sorted(written_keys(influx["relay"].lines)) == sorted(keys_of(readings))
    (letter,) = drain(influx["dead_letters"])
    assert letter["reason"].startswith("batch_id reused with different content")
    assert other.reason in letter["reason"]
    assert f"batch:{batch_id}" in letter["reason"]
    assert letter["origin"]["sequence_number"] == "21"
    assert base64.b64decode(letter["payload_base64"]) == other.payload

    # the same readings encoded again (another producer name, compression level) are no
    # other content: a duplicate, not a refusal
    from iiot.wire import encode_batch
    from tests.poison import columns_of

    reencoded = encode_batch(columns_of(readings), batch_id=batch_id, producer="x", level=9)
    assert reencoded != payload
    assert handler.handler(kinesis_event([reencoded]), lambda_context) == {"batchItemFailures": []}
    assert drain(influx["dead_letters"]) == []
    assert len(influx["relay"].lines) == len(readings)


# ------------------------------------------------------------------- the service, no AWS


class CountingWriter:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, lines: list[str]) -> None:
        self.lines.extend(lines)


def service_with_memory(catalog) -> tuple[InfluxWriterService, CountingWriter, list[dict]]:
    writer, dead = CountingWriter(), RecordingDeadLetter()
    service = InfluxWriterService(
        writer=writer, dead_letter=dead, validator=Validator(catalog), once=InMemoryOnce()
    )
    return service, writer, dead.sent


GOOD_READINGS = good_readings(20, start_ms=NOW_MS - HOUR_MS, sensor=85)
GOOD_BATCH = good_batch(GOOD_READINGS)


def _damaged(payload: bytes) -> st.SearchStrategy[bytes]:
    n = len(payload)
    return st.one_of(
        st.integers(0, n - 1).map(lambda cut: payload[:cut]),
        st.tuples(st.integers(0, n - 1), st.integers(1, 255)).map(
            lambda d: payload[: d[0]] + bytes([payload[d[0]] ^ d[1]]) + payload[d[0] + 1 :]
        ),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=16)).map(
            lambda d: payload[: d[0]] + d[1] + payload[d[0] :]
        ),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_damaged(GOOD_BATCH))
def test_no_damaged_copy_sent_first_shadows_the_good_batch(catalog, damaged):
    service, writer, dead = service_with_memory(catalog)
    first = service.write_record(damaged, {"n": "1"})
    assert first.dead_lettered or first.points, "a copy is either refused or written"
    assert all(letter["reason"] for letter in dead)
    service.write_record(GOOD_BATCH, {"n": "2"})
    # The good readings are in InfluxDB: written now, or by an intact copy of the same
    # readings (a flip in the header's reserved byte keeps id and body).
    assert keys_of(GOOD_READINGS) <= set(written_keys(writer.lines))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(poison_payloads(NOW_MS))
def test_no_hostile_payload_makes_the_writer_raise(catalog, payload):
    service, _, dead = service_with_memory(catalog)
    outcome = service.write_record(payload, {"n": "1"})
    if not (outcome.dead_lettered or outcome.points or outcome.rejected_readings):
        assert json.loads(payload) == []  # an empty list: nothing to write, nothing to refuse
    assert all(letter["reason"] for letter in dead)
    after = good_readings(3, start_ms=NOW_MS - HOUR_MS, sensor=86)
    assert service.write_record(good_json(after), {"n": "2"}).points == 3


@pytest.mark.slow
def test_bombs_are_refused_by_the_writer_within_an_address_space_limit():
    """Each bomb through the writer's service in a fresh interpreter limited to 320 MB of
    address space (about 110 MB is the interpreter with numpy), and then the largest batch
    the writer's limits accept, written in full: inflating a bomb would raise MemoryError."""
    result = run_limited(
        """
        import resource, time
        from iiot.catalog import load_catalog
        from iiot.contract import Validator
        from lambdas.influx_writer.models import WRITER_LIMITS
        from lambdas.influx_writer.repository import RecordingDeadLetter
        from lambdas.influx_writer.service import InfluxWriterService
        from lambdas.shared.idempotency import InMemoryOnce
        from tests.poison import bombs, good_batch, good_readings

        class Counting:
            points = 0
            def write(self, lines):
                Counting.points += len(lines)

        dead = RecordingDeadLetter()
        service = InfluxWriterService(writer=Counting(), dead_letter=dead,
                                      validator=Validator(load_catalog()), once=InMemoryOnce())
        now = int(time.time() * 1000)
        for n, poison in enumerate(bombs(now)):
            outcome = service.write_record(poison.payload, {"n": str(n)})
            assert outcome.dead_lettered and outcome.points == 0, poison.name
            assert poison.reason in dead.sent[-1]["reason"], (poison.name, dead.sent[-1])
            dead.sent.clear()
            print("refused:", poison.name)
        import numpy as np
        from iiot.contract import ReadingColumns, SeriesKey
        from iiot.wire import encode_batch
        n = WRITER_LIMITS.max_batch_readings
        series = [SeriesKey("F01", "F01-M001", f"F01-M001-temperature-{i}", "temperature", "degC")
                  for i in range(100)]
        rng = np.random.default_rng(7)  # noisy values and jittered times: a realistic size
        largest = encode_batch(ReadingColumns(
            series,
            np.arange(n, dtype=np.int32) % 100,
            now - 3 * 3600_000 + np.arange(n, dtype=np.int64) * 10 + rng.integers(0, 5, n),
            (60.0 + rng.normal(0, 5, n)).round(2),
        ))
        outcome = service.write_record(largest, {"n": "largest"})
        assert outcome.points == WRITER_LIMITS.max_batch_readings, outcome
        print("largest batch bytes:", len(largest))
        print("peak rss mb:", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
        """,
        address_space_mb=320,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("refused:") == 5
