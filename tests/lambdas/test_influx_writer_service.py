"""The writer's logic with scripted InfluxDB answers: batching, retries, dead letters."""

from __future__ import annotations

import json

import pytest

from iiot.contract import Validator
from lambdas.influx_writer.models import WriteError, WriteFailedError
from lambdas.influx_writer.repository import RecordingDeadLetter
from lambdas.influx_writer.service import CheckedRecord, InfluxWriterService

from .writer_data import BATCH_ID, batch_payload, json_payload, readings

ORIGIN = {"sequence_number": "7", "source": "kinesis"}


class ScriptedWriter:
    """Answers each write with the next scripted error (None = success), recording lines."""

    def __init__(self, *answers: WriteError | None) -> None:
        self.answers = list(answers)
        self.calls: list[list[str]] = []

    def write(self, lines: list[str]) -> None:
        self.calls.append(lines)
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


def make_service(writer, catalog, **options):
    delays: list[float] = []
    dead = RecordingDeadLetter()
    service = InfluxWriterService(
        writer=writer,
        dead_letter=dead,
        validator=Validator(catalog, clock=lambda: 1_767_571_200 + 86_400),
        sleep=delays.append,
        jitter=lambda: 1.0,  # the upper end of the jitter range: deterministic delays
        **options,
    )
    return service, dead, delays


def test_both_wire_formats_write_every_reading_in_batches(catalog):
    writer = ScriptedWriter()
    service, dead, _ = make_service(writer, catalog, batch_points=8)
    outcome = service.write_record(batch_payload(readings(count=10)), ORIGIN)
    assert (outcome.format, outcome.points, outcome.attempts) == ("batch", 20, 3)
    assert [len(call) for call in writer.calls] == [8, 8, 4]
    outcome = service.write_record(json_payload(readings(count=2)), ORIGIN)
    assert (outcome.format, outcome.points) == ("json", 4)
    assert dead.sent == []


def test_throttling_and_server_errors_are_retried_with_backoff(catalog):
    writer = ScriptedWriter(
        WriteError("too many requests", status=429, retry_after_s=3.0),
        WriteError("unavailable", status=503),
        WriteError("connection refused", status=None),
        None,
    )
    service, _, delays = make_service(writer, catalog, base_backoff_s=0.2)
    outcome = service.write_record(batch_payload(readings(count=1)), ORIGIN)
    assert outcome.points == 2
    assert outcome.attempts == 4
    assert delays == [3.0, 0.4, 0.8]  # Retry-After honoured, then doubling


def test_retries_run_out_and_the_record_fails_to_be_retried_later(catalog):
    writer = ScriptedWriter(*[WriteError("unavailable", status=503)] * 3)
    service, dead, delays = make_service(writer, catalog, max_attempts=3)
    with pytest.raises(WriteFailedError, match="failed 3 times, last: 503"):
        service.write_record(batch_payload(readings(count=1)), ORIGIN)
    assert len(delays) == 2
    assert dead.sent == []  # not lost: Lambda retries the record


def test_auth_problem_fails_loudly_without_retrying(catalog):
    service, _, delays = make_service(
        ScriptedWriter(WriteError("unauthorized", status=401)), catalog
    )
    with pytest.raises(WriteFailedError, match=r"answered 401.*INFLUXDB_SECRET_ARN"):
        service.write_record(batch_payload(readings(count=1)), ORIGIN)
    assert delays == []


def test_refused_points_are_dead_lettered_with_the_server_reason(catalog):
    writer = ScriptedWriter(WriteError("partial write: field type conflict", status=400))
    service, dead, _ = make_service(writer, catalog)
    outcome = service.write_record(batch_payload(readings(count=1)), ORIGIN)
    assert outcome.dead_lettered
    assert outcome.points == 0
    (letter,) = dead.sent
    assert letter["reason"].startswith("InfluxDB refused the points (400): partial write")
    assert letter["payload"].count(b"\n") == 1  # the two refused lines


def test_poison_record_is_dead_lettered_and_never_written(catalog):
    writer = ScriptedWriter()
    service, dead, _ = make_service(writer, catalog)
    outcome = service.write_record(b"\x00garbage", ORIGIN)
    assert outcome.dead_lettered
    assert outcome.points == 0
    damaged = bytearray(batch_payload(readings(count=3)))
    damaged[-5] ^= 0xFF
    outcome = service.write_record(bytes(damaged), ORIGIN)
    assert outcome.dead_lettered
    assert writer.calls == []
    assert [d["reason"].split(":")[0] for d in dead.sent] == ["poison record", "poison record"]
    assert "crc" in dead.sent[1]["reason"].lower()
    assert dead.sent[0]["origin"] == ORIGIN


def test_bad_readings_are_dead_lettered_and_the_rest_written(catalog):
    items = readings(count=2)
    bad = items[0].__class__(items[0].timestamp, "F01", "F01-M001", "F01-M001-temperature",
                             "temperature", 999.0, "degC")  # fmt: skip
    writer = ScriptedWriter()
    service, dead, _ = make_service(writer, catalog)
    outcome = service.write_record(json_payload([*items, bad]), ORIGIN)
    assert outcome.points == 4
    assert outcome.rejected_readings == 1
    (letter,) = dead.sent
    assert "outside the physically valid range" in letter["reason"]
    assert b"999.0" in letter["payload"]


def test_thousands_of_bad_readings_cost_a_few_dead_letters_and_keep_every_reason(catalog):
    """A gateway with a broken sensor: every reading refused, each kept with its index and
    reason, in letters of at most ~96 KiB instead of one dead-letter call per reading."""
    items = [
        r.__class__(r.timestamp, r.factory_id, r.machine_id, r.sensor_id, r.metric, 999.0, r.unit)
        for r in readings(count=1500)
        if r.metric == "temperature"
    ] + readings("F01-M002", count=1)
    service, dead, _ = make_service(ScriptedWriter(), catalog)
    outcome = service.write_record(json_payload(items), ORIGIN)
    assert (outcome.points, outcome.rejected_readings) == (2, 1500)
    assert len(outcome.reasons) == 20  # a sample; the count says the rest
    assert 1 < len(dead.sent) <= 10
    lines = [json.loads(line) for letter in dead.sent for line in letter["payload"].splitlines()]
    assert [line["index"] for line in lines] == list(range(1500))
    assert all("outside the physically valid range" in line["reason"] for line in lines)
    assert all('"value":999.0' in line["reading"] for line in lines)
    assert all(len(letter["payload"]) <= 128 * 1024 for letter in dead.sent)
    first = dead.sent[0]["reason"]
    assert first.startswith(f"{len(dead.sent[0]['payload'].splitlines())} readings rejected")
    assert "outside the physically valid range" in first


def test_idempotency_key_is_the_batch_id_or_the_payload_hash_once_intact(catalog):
    service, _, _ = make_service(ScriptedWriter(), catalog)
    batch = service.check(batch_payload(readings(count=1)))
    assert isinstance(batch, CheckedRecord)
    assert batch.key == f"batch:{BATCH_ID}"
    assert batch.content.startswith("readings-sha256:")
    payload = json_payload(readings(count=1))
    checked = service.check(payload)
    assert isinstance(checked, CheckedRecord)
    assert checked.key == checked.content
    assert checked.key.startswith("sha256:")
    damaged = bytearray(batch_payload(readings(count=1)))
    damaged[-2] ^= 0x01
    assert "CRC-32 mismatch" in str(service.check(bytes(damaged)))  # no key: a reason
