"""Line protocol encoding: escaping, float fields, millisecond timestamps."""

from __future__ import annotations

import pytest

from iiot.contract import Reading, ReadingColumns
from lambdas.influx_writer.line_protocol import encode_columns, encode_point, format_float


def test_readings_become_one_point_each_with_sorted_tags():
    columns = ReadingColumns.from_readings(
        [
            Reading(1767571200123, "F01", "F01-M001", "F01-M001-temperature", "temperature",
                    71.25, "degC"),
            Reading(1767571201123, "F01", "F01-M001", "F01-M001-flow", "flow_rate", 600.0, "L/min"),
        ]
    )  # fmt: skip
    assert encode_columns(columns) == [
        "temperature,factory_id=F01,machine_id=F01-M001,sensor_id=F01-M001-temperature,"
        "unit=degC value=71.25 1767571200123",
        "flow_rate,factory_id=F01,machine_id=F01-M001,sensor_id=F01-M001-flow,"
        "unit=L/min value=600.0 1767571201123",
    ]


def test_escaping_of_measurement_tags_and_fields():
    line = encode_point("pump temp,x", {"site name": "Plant 1,A=B", "z": ""}, {"val ue": 1.0}, 5)
    assert line == r"pump\ temp\,x,site\ name=Plant\ 1\,A\=B val\ ue=1.0 5"


@pytest.mark.parametrize(
    ("value", "text"),
    [(100.0, "100.0"), (0.1, "0.1"), (-3.5, "-3.5"), (1e20, "1e+20"), (2.5e-7, "2.5e-07")],
)
def test_floats_always_read_as_floats(value, text):
    assert format_float(value) == text


def test_non_finite_values_are_refused():
    with pytest.raises(ValueError, match="no representation"):
        format_float(float("nan"))
