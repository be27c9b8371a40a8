import contextlib
import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from iiot.contract import ReadingColumns, SeriesKey
from iiot.wire import (
    HEADER_SIZE,
    WireFormatError,
    decode_batch,
    encode_batch,
    validate_batch,
    verified_batch_id,
)

SERIES = [
    SeriesKey("F01", "F01-M001", f"F01-M001-{metric}", metric, unit)
    for metric, unit in [("temperature", "degC"), ("vibration", "mm/s"), ("rpm", "rpm")]
]


def canonical(columns: ReadingColumns):
    """Readings as a sorted list of (series key, timestamp, value bits): order-free and exact."""
    return sorted(
        (tuple(columns.series[i]), int(ts), int(bits))
        for i, ts, bits in zip(
            columns.series_index.tolist(),
            columns.timestamp.tolist(),
            columns.value.view(np.int64).tolist(),
            strict=True,
        )
    )


@st.composite
def columns_strategy(draw):
    n = draw(st.integers(0, 200))
    n_series = len(SERIES)
    series_index = draw(hnp.arrays(np.int32, n, elements=st.integers(0, n_series - 1)))
    timestamp = draw(hnp.arrays(np.int64, n, elements=st.integers(0, 2**62)))
    decimal_values = st.integers(-(10**7), 10**7).map(lambda q: q / 100)
    value = draw(
        hnp.arrays(
            np.float64,
            n,
            elements=st.one_of(decimal_values, st.floats(allow_nan=True, allow_infinity=True)),
        )
    )
    return ReadingColumns(SERIES, series_index, timestamp, value)


@settings(max_examples=300, deadline=None)
@given(columns_strategy(), st.integers(1, 19))
def test_batch_round_trip_is_bit_exact(columns, level):
    batch_id = uuid.uuid4()
    payload = encode_batch(
        columns,
        batch_id=batch_id,
        producer="gw-1",
        created_ms=5,
        first_seq=10,
        last_seq=20,
        level=level,
    )
    batch = decode_batch(payload)
    assert batch.batch_id == batch_id == verified_batch_id(payload)
    assert (batch.producer, batch.created_ms, batch.first_seq, batch.last_seq) == (
        "gw-1",
        5,
        10,
        20,
    )
    assert canonical(batch.columns) == canonical(columns)


@pytest.mark.parametrize("values", [[-0.0], [-0.0, 1.5, 2.25], [0.0, -0.0]])
def test_negative_zero_survives_alone_or_among_decimals(values):
    columns = ReadingColumns(
        SERIES[:1],
        np.zeros(len(values), np.int32),
        np.arange(len(values), dtype=np.int64),
        np.array(values),
    )
    assert canonical(decode_batch(encode_batch(columns)).columns) == canonical(columns)


def test_negative_zero_and_subnormals_survive():
    values = np.array([-0.0, 0.0, 5e-324, -1.5, 1e300])
    columns = ReadingColumns(
        SERIES[:1], np.zeros(5, np.int32), np.arange(5, dtype=np.int64), values
    )
    assert canonical(decode_batch(encode_batch(columns)).columns) == canonical(columns)


def test_typical_sensor_batch_is_compact():
    rng = np.random.default_rng(0)
    n_series, steps = 500, 20
    series = [
        SeriesKey("F01", f"F01-M{i // 5:03d}", f"F01-M{i // 5:03d}-s{i}", "temperature", "degC")
        for i in range(n_series)
    ]
    timestamp = np.repeat(1_767_571_200_000 + 1000 * np.arange(steps), n_series)
    value = np.round(70 + rng.normal(0, 0.3, steps * n_series), 2)
    columns = ReadingColumns(
        series, np.tile(np.arange(n_series, dtype=np.int32), steps), timestamp, value
    )
    payload = encode_batch(columns)
    assert len(payload) / len(columns) < 6  # vs ~180 bytes per reading as JSON
    assert canonical(decode_batch(payload).columns) == canonical(columns)


def good_payload():
    columns = ReadingColumns(
        SERIES,
        np.array([0, 1, 2], np.int32),
        np.array([1, 2, 3], np.int64),
        np.array([1.5, 2.5, 3.5]),
    )
    return encode_batch(columns)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p[:10], "shorter than the"),
        (lambda p: b"XXXXX" + p[5:], "missing IIOTB magic"),
        (lambda p: p[:5] + b"\x09" + p[6:], "batch format version 9 is not supported"),
        (lambda p: p[:-1], "truncated or padded"),
        (lambda p: p + b"\x00", "truncated or padded"),
        (
            lambda p: p[:HEADER_SIZE] + bytes([p[HEADER_SIZE] ^ 0xFF]) + p[HEADER_SIZE + 1 :],
            "CRC-32 mismatch",
        ),
    ],
)
def test_damaged_batches_are_rejected_with_a_reason(damage, message):
    with pytest.raises(WireFormatError, match=message):
        decode_batch(damage(good_payload()))


def test_count_mismatch_is_detected():
    payload = bytearray(good_payload())
    payload[HEADER_SIZE - 12 : HEADER_SIZE - 8] = (7).to_bytes(4, "little")
    with pytest.raises(WireFormatError, match="counts add up to 3, the header announces 7"):
        decode_batch(bytes(payload))


def test_validate_batch_turns_corruption_into_one_reject(catalog):
    from iiot.contract import Validator

    batch, outcome = validate_batch(good_payload()[:-3], Validator(catalog))
    assert batch is None
    assert outcome.accepted == 0
    assert len(outcome.rejects) == 1
    assert outcome.rejects[0].index is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_after_the_magic_never_crash(noise):
    with contextlib.suppress(WireFormatError):
        decode_batch(b"IIOTB" + noise)
