"""The failure predictor's probability (the catalog's derived series `failure_probability`) in
InfluxDB: written like any reading, as the measurement, tags and field the fleet dashboard's
risk panels query; a probability outside 0..1 or NaN is dead-lettered with its reason."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from iiot.contract import Reading, Validator
from lambdas.influx_writer.repository import InfluxV1Writer, RecordingDeadLetter
from lambdas.influx_writer.service import InfluxWriterService
from local_platform.report.grafana import RISK_METRIC, dashboards

from .writer_data import T0, batch_payload, json_payload

_databases = itertools.count()


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, lines: list[str]) -> None:
        self.lines.extend(lines)


def risk(machine: str, probability: float, ts: int = T0 + 7) -> Reading:
    """A failure_probability reading exactly as the SensorBuffer makes it from a prediction
    (sensor_buffer.derived: sensor id = the deriving component)."""
    return Reading(ts, "F01", machine, "failure_predictor", RISK_METRIC, probability, "probability")


def service(writer, catalog) -> tuple[InfluxWriterService, RecordingDeadLetter]:
    dead = RecordingDeadLetter()
    return (
        InfluxWriterService(
            writer=writer,
            dead_letter=dead,
            validator=Validator(catalog, clock=lambda: T0 / 1000 + 86_400),
        ),
        dead,
    )


def risk_panel_queries() -> list[str]:
    fleet = dashboards()["fleet.json"]
    return [
        target["query"]
        for panel in fleet["panels"]
        for target in panel.get("targets", [])
        if RISK_METRIC in target.get("query", "")
    ]


def test_a_probability_is_the_point_the_risk_panels_query(catalog):
    writer = Lines()
    writer_service, dead = service(writer, catalog)
    outcome = writer_service.write_record(batch_payload([risk("F01-M001", 0.4321)]), {})
    assert (outcome.points, dead.sent) == (1, [])
    (line,) = writer.lines
    assert line == (
        "failure_probability,factory_id=F01,machine_id=F01-M001,sensor_id=failure_predictor,"
        f"unit=probability value=0.4321 {T0 + 7}"
    )
    measurement, _, rest = line.partition(",")
    tags = dict(pair.split("=") for pair in rest.split(" ")[0].split(","))
    field = rest.split(" ")[1].split("=")[0]
    queries = risk_panel_queries()
    assert len(queries) == 2  # the latest per machine, the trend
    for query in queries:
        assert f'r._measurement == "{measurement}" and r._field == "{field}"' in query
        # every tag a panel filters or groups by is one the writer sets
        used = set(re.findall(r"r\.(\w+) =~", query)) | set(
            re.findall(r'"(\w+_id)"', query.split("|> filter")[-1])
        )
        assert used
        assert used <= set(tags), (used, tags)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (1.5, "outside the physically valid range"),
        (-0.2, "outside the physically valid range"),
        (float("nan"), "value"),
    ],
)
def test_a_probability_outside_0_1_or_nan_is_dead_lettered_with_its_reason(catalog, value, reason):
    writer = Lines()
    writer_service, dead = service(writer, catalog)
    payload = json_payload([risk("F01-M001", 0.2), risk("F01-M002", value)])
    if value != value:  # JSON has no NaN: a producer that writes the literal anyway
        payload = payload.replace(b'"value":null', b'"value":NaN')
        assert b"NaN" in payload
    outcome = writer_service.write_record(payload, {})
    assert outcome.points == 1
    assert [line.split(",")[2] for line in writer.lines] == ["machine_id=F01-M001"]
    (letter,) = dead.sent
    assert reason in letter["reason"]
    assert "F01-M002" in letter["payload"].decode()


@pytest.mark.slow
def test_probabilities_land_in_a_real_influxdb_once_per_key(influxd, catalog):
    """A real InfluxDB (Debian's 1.6, InfluxQL): the latest probability per machine, as the
    "Fleet risk" panel asks for it (last value grouped by factory and machine), and a
    redelivered record (at least once upstream) overwrites its points instead of adding."""
    database = f"iiot_risk_{next(_databases)}"
    influxd.query(f'CREATE DATABASE "{database}"')
    writer_service, dead = service(InfluxV1Writer(influxd.url, database), catalog)
    first = batch_payload([risk("F01-M001", 0.1, T0), risk("F01-M002", 0.7, T0)])
    later = json_payload([risk("F01-M001", 0.35, T0 + 60_000)])
    for payload in (first, later, first):  # the first record arrives twice
        writer_service.write_record(payload, {})
    assert dead.sent == []
    latest = influxd.query(
        f'SELECT last(value) FROM "{RISK_METRIC}" GROUP BY "factory_id", "machine_id"', database
    )
    assert {
        (s["tags"]["factory_id"], s["tags"]["machine_id"]): s["values"][0][1] for s in latest
    } == {
        ("F01", "F01-M001"): 0.35,
        ("F01", "F01-M002"): 0.7,
    }
    (count,) = influxd.query(f'SELECT count(value) FROM "{RISK_METRIC}"', database)
    assert count["values"][0][1] == 3
    fields = influxd.query(f'SHOW FIELD KEYS FROM "{RISK_METRIC}"', database)
    assert fields[0]["values"] == [["value", "float"]]
    assert json.dumps(fields)  # plain data
