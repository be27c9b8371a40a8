import json
import math

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iiot.contract import (
    EARLIEST_TIMESTAMP_MS,
    Reading,
    ReadingColumns,
    Validator,
)
from iiot.wire import MAX_JSON_PAYLOAD_BYTES, encode_json, validate_json

NOW_MS = 1_790_000_000_000


def make_validator(catalog, **options):
    return Validator(catalog, clock=lambda: NOW_MS / 1000, **options)


def reading(**changes):
    base = {
        "timestamp": NOW_MS - 1000,
        "factory_id": "F01",
        "machine_id": "F01-M001",
        "sensor_id": "F01-M001-temperature",
        "metric": "temperature",
        "value": 71.25,
        "unit": "degC",
    }
    base.update(changes)
    return base


def reasons(payload, validator):
    return [(r.index, r.reason) for r in validate_json(payload, validator).rejects]


def test_valid_single_reading_list_and_envelope_are_accepted(catalog):
    validator = make_validator(catalog)
    single = json.dumps(reading()).encode()
    listed = json.dumps([reading(), reading(timestamp=NOW_MS - 2000)]).encode()
    envelope = json.dumps({"v": 1, "readings": [reading()]}).encode()
    assert validate_json(single, validator).accepted == 1
    assert validate_json(listed, validator).accepted == 2
    assert validate_json(envelope, validator).accepted == 1


def test_case_study_metric_type_spelling_is_read_as_metric(catalog):
    legacy = reading()
    legacy["metric_type"] = legacy.pop("metric")
    outcome = validate_json(json.dumps([legacy]).encode(), make_validator(catalog))
    assert outcome.rejects == []
    assert outcome.columns.to_readings()[0].metric == "temperature"


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"unit": None}, "unit: expected str, got null"),
        ({"value": "hot"}, "value: expected float, got str"),
        ({"timestamp": 1.5e12}, "timestamp: expected int, got float"),
        ({"timestamp": True}, "timestamp: expected int, got bool"),
        ({"machine_id": ""}, "machine_id: '' is not a valid id (1-128 letters"),
        ({"factory_id": "F01/#"}, "factory_id: 'F01/#' is not a valid id"),
        ({"sensor_id": "s" * 129}, "sensor_id: expected str of length <= 128"),
        ({"metric": "humidity"}, "metric: unknown metric 'humidity'"),
        ({"unit": "degF"}, "unit: 'degF' does not match the catalog's unit 'degC' for temperature"),
        (
            {"value": 900.0},
            "value: 900.0 degC is outside the physically valid range [-40.0, 250.0]",
        ),
        ({"timestamp": 1_790_000_000}, "is before 2000-01-01 (it looks like seconds"),
        ({"timestamp": NOW_MS + 3_600_000}, "s beyond the allowed clock skew (future)"),
    ],
)
def test_each_bad_field_is_named_with_its_problem(catalog, bad, expected):
    payload = json.dumps([reading(), reading(**bad)]).encode()
    found = reasons(payload, make_validator(catalog))
    assert len(found) == 1
    index, reason = found[0]
    assert index == 1
    assert expected in reason


def test_missing_field_is_named(catalog):
    incomplete = reading()
    del incomplete["sensor_id"]
    assert reasons(json.dumps(incomplete).encode(), make_validator(catalog)) == [
        (0, "sensor_id: missing required field")
    ]


@pytest.mark.parametrize(
    ("literal", "shown"), [("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity")]
)
def test_nan_and_infinity_are_rejected_without_losing_the_good_readings(catalog, literal, shown):
    good = json.dumps(reading())
    bad = json.dumps(reading()).replace("71.25", literal)
    payload = f"[{good}, {bad}, {good}]".encode()
    outcome = validate_json(payload, make_validator(catalog))
    assert outcome.accepted == 2
    assert [(r.index, r.reason) for r in outcome.rejects] == [
        (1, f"value: {shown} is not a finite number")
    ]
    assert literal.encode() in outcome.rejects[0].payload


def test_overflowing_number_is_rejected(catalog):
    payload = json.dumps(reading()).replace("71.25", "1e999").encode()
    assert reasons(payload, make_validator(catalog)) == [(0, "value: number out of range")]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x00\xff garbage", "payload: invalid UTF-8 at byte 1"),
        (b"\x00 garbage", "payload: not valid JSON"),
        (b"42", "payload: expected a reading object or a list of them"),
        (b'{"v": 2, "readings": []}', "v: JSON format version 2 is not supported"),
        (b'{"v": 1, "readings": 5}', "readings: expected a list of reading objects"),
    ],
)
def test_whole_payload_rejects(catalog, payload, expected):
    found = reasons(payload, make_validator(catalog))
    assert len(found) == 1
    assert found[0][0] is None
    assert expected in found[0][1]


def test_oversized_payload_is_refused_before_parsing(catalog):
    payload = b"[" + b" " * MAX_JSON_PAYLOAD_BYTES + b"]"
    found = reasons(payload, make_validator(catalog))
    assert found[0][0] is None
    assert "exceeds" in found[0][1]


def test_range_check_can_be_left_to_the_lake(catalog):
    payload = json.dumps(reading(value=900.0)).encode()
    assert validate_json(payload, make_validator(catalog, check_range=False)).accepted == 1


readings_strategy = st.builds(
    Reading,
    timestamp=st.integers(EARLIEST_TIMESTAMP_MS, NOW_MS),
    factory_id=st.sampled_from(["F01", "F02"]),
    machine_id=st.sampled_from(["M1", "M2", "M-3", "", "M/#"]),
    sensor_id=st.sampled_from(["s1", "s2"]),
    metric=st.sampled_from(["temperature", "vibration", "rpm", "unknown"]),
    value=st.floats(allow_nan=True, allow_infinity=True),
    unit=st.sampled_from(["degC", "mm/s", "rpm"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(readings_strategy, max_size=30))
def test_json_and_columnar_validation_agree(catalog, readings):
    """The per-reading path (JSON) and the vectorized path (batches) accept the same readings."""
    validator = make_validator(catalog)
    via_json = validate_json(
        json.dumps([msgspec.to_builtins(r) for r in readings], allow_nan=True).encode(), validator
    )
    via_columns = validator.validate_columns(ReadingColumns.from_readings(readings))
    assert sorted((r.index, r.reason) for r in via_json.rejects) == sorted(
        (r.index, r.reason) for r in via_columns.rejects
    )
    assert [msgspec.to_builtins(r) for r in via_json.columns.to_readings()] == [
        msgspec.to_builtins(r) for r in via_columns.columns.to_readings()
    ]
    for reject in via_json.rejects:
        assert reject.reason
        assert reject.payload


@settings(max_examples=300, deadline=None)
@given(st.lists(readings_strategy.filter(lambda r: math.isfinite(r.value)), max_size=20))
def test_json_round_trip(catalog, readings):
    validator = make_validator(catalog, check_range=False)
    for envelope in (True, False):
        outcome = validate_json(encode_json(readings, envelope=envelope), validator)
        kept = {msgspec.json.encode(r) for r in outcome.columns.to_readings()}
        rejected = {r.index for r in outcome.rejects}
        for position, r in enumerate(readings):
            assert (msgspec.json.encode(r) in kept) != (position in rejected)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_arbitrary_bytes_never_crash_and_every_reject_has_a_reason(catalog, payload):
    from iiot.wire import validate_payload

    outcome = validate_payload(payload, make_validator(catalog))
    assert all(r.reason for r in outcome.rejects)
    assert (
        outcome.accepted + len(outcome.rejects) >= (1 if payload.strip() else 0) or outcome.rejects
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.fixed_dictionaries({}, optional=dict.fromkeys(reading(), json_values)), max_size=8)
)
def test_wrong_shapes_are_rejected_per_item_with_reasons(catalog, items):
    payload = json.dumps(items, allow_nan=True).encode()
    outcome = validate_json(payload, make_validator(catalog))
    assert outcome.accepted + len(outcome.rejects) == len(items)
    assert all(r.reason and r.index is not None for r in outcome.rejects)


def test_columns_concat_merges_series_tables():
    a = ReadingColumns.from_readings([Reading(**reading())])
    b = ReadingColumns.from_readings(
        [Reading(**reading(sensor_id="x")), Reading(**reading(timestamp=NOW_MS - 5))]
    )
    merged = ReadingColumns.concat([a, b])
    assert len(merged) == 3
    assert len(merged.series) == 2
    assert merged.column("sensor_id") == ["F01-M001-temperature", "x", "F01-M001-temperature"]
    assert np.array_equal(merged.timestamp, [NOW_MS - 1000, NOW_MS - 1000, NOW_MS - 5])
