"""The writer against a real InfluxDB server (Debian's 1.6, v1 `/write` + InfluxQL).

Production writes the same line protocol through the v2 API; here it goes through v1 `/write`
with `precision=ms` and is read back with InfluxQL to prove escaping, types and timestamps.
"""

from __future__ import annotations

import itertools

import pytest

from iiot.contract import Validator
from lambdas.influx_writer.line_protocol import encode_point
from lambdas.influx_writer.models import WriteError
from lambdas.influx_writer.repository import InfluxV1Writer, RecordingDeadLetter
from lambdas.influx_writer.service import InfluxWriterService

from .writer_data import T0, batch_payload, json_payload, readings

pytestmark = pytest.mark.slow
_databases = itertools.count()


@pytest.fixture
def database(influxd) -> str:
    name = f"iiot_test_{next(_databases)}"
    influxd.query(f'CREATE DATABASE "{name}"')
    return name


def service_for(influxd, database, catalog, **options) -> tuple[InfluxWriterService, list]:
    dead = RecordingDeadLetter()
    service = InfluxWriterService(
        writer=InfluxV1Writer(influxd.url, database),
        dead_letter=dead,
        validator=Validator(catalog, clock=lambda: T0 / 1000 + 86_400),
        **options,
    )
    return service, dead.sent


def test_both_formats_land_with_exact_timestamps_and_float_values(influxd, database, catalog):
    service, dead = service_for(influxd, database, catalog, batch_points=7)
    batch = service.write_record(batch_payload(readings("F01-M001", count=10)), {})
    as_json = service.write_record(json_payload(readings("F01-M002", count=3)), {})
    assert (batch.points, as_json.points, dead) == (20, 6, [])

    (series,) = influxd.query(
        "SELECT value, factory_id, sensor_id, unit FROM temperature "
        "WHERE machine_id = 'F01-M001' ORDER BY time",
        database,
    )
    assert series["columns"] == ["time", "value", "factory_id", "sensor_id", "unit"]
    assert series["values"] == [
        [T0 + i * 1000 + 7, float(60 + i), "F01", "F01-M001-temperature", "degC"] for i in range(10)
    ]
    vibration = influxd.query("SELECT value FROM vibration WHERE machine_id = 'F01-M001'", database)
    assert [row[1] for row in vibration[0]["values"]] == [
        round(3.1 + i * 0.01, 2) for i in range(10)
    ]
    fields = influxd.query("SHOW FIELD KEYS FROM temperature", database)
    assert fields[0]["values"] == [["value", "float"]]
    counts = influxd.query('SELECT count(value) FROM temperature GROUP BY "machine_id"', database)
    assert {s["tags"]["machine_id"]: s["values"][0][1] for s in counts} == {
        "F01-M001": 10,
        "F01-M002": 3,
    }


def test_a_retried_record_does_not_duplicate_points(influxd, database, catalog):
    service, _ = service_for(influxd, database, catalog)
    payload = batch_payload(readings("F01-M003", count=5))
    service.write_record(payload, {})
    service.write_record(payload, {})  # Lambda redelivers the same record
    (series,) = influxd.query("SELECT count(value) FROM temperature", database)
    assert series["values"][0][1] == 5


def test_escaped_names_and_tag_values_read_back_verbatim(influxd, database):
    writer = InfluxV1Writer(influxd.url, database)
    writer.write(
        [
            encode_point(
                "pump temp,x",
                {"site name": "Plant 1,A=B", "line": 'quote" back\\slash'},
                {"val ue": 100.0},
                T0 + 1,
            )
        ]
    )
    (series,) = influxd.query('SELECT * FROM "pump temp,x"', database)
    row = dict(zip(series["columns"], series["values"][0], strict=True))
    assert row == {
        "time": T0 + 1,
        "line": 'quote" back\\slash',
        "site name": "Plant 1,A=B",
        "val ue": 100.0,
    }


def test_a_type_conflict_is_a_400_the_service_dead_letters(influxd, database, catalog):
    writer = InfluxV1Writer(influxd.url, database)
    writer.write(["temperature,machine_id=F01-M009 value=1i 1767571200000"])  # an integer field
    with pytest.raises(WriteError) as refused:
        writer.write(["temperature,machine_id=F01-M009 value=2.5 1767571201000"])
    assert refused.value.status == 400
    assert "field type conflict" in str(refused.value)

    service, dead = service_for(influxd, database, catalog)
    outcome = service.write_record(batch_payload(readings("F01-M009", count=1)), {"n": "1"})
    assert outcome.dead_lettered
    assert dead[0]["reason"].startswith("InfluxDB refused the points (400)")


def test_no_server_is_a_retryable_error(catalog):
    from local_platform.connected.influxd import free_port

    writer = InfluxV1Writer(f"http://127.0.0.1:{free_port()}", "nothing", timeout_s=2)
    with pytest.raises(WriteError) as failed:
        writer.write(["m v=1.0 1"])
    assert failed.value.status is None
    assert failed.value.retryable
