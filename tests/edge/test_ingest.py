"""Ingest: the fast JSON path agrees with the core's validation; bad input is quarantined with
its reason and never crashes the component (hypothesis fuzzing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_buffer.ingest import Incoming, Ingestor
from sensor_buffer.store import Store, iter_stored
from sensor_buffer.thresholds import ThresholdChecker

from iiot.catalog import MetricCatalog
from iiot.contract import Reading, Validator
from iiot.wire import encode_batch, validate_json

NOW_MS = 1_790_000_000_000


def make_ingestor(path: Path, catalog: MetricCatalog, alerts: list | None = None) -> Ingestor:
    store = Store(path / "buffer.sqlite3", producer="F1/gw", synchronous="NORMAL")
    checker = ThresholdChecker({n: m.edge for n, m in catalog.items()}, store.series.__getitem__)
    sink = alerts if alerts is not None else []
    return Ingestor(
        store,
        Validator(catalog, clock=lambda: NOW_MS / 1000),
        checker,
        on_alerts=sink.extend,
        clock=lambda: NOW_MS / 1000,
    )


def reading(**overrides) -> dict:
    base = {
        "timestamp": NOW_MS - 60_000,
        "factory_id": "F1",
        "machine_id": "F1-M001",
        "sensor_id": "F1-M001-temperature",
        "metric": "temperature",
        "value": 55.25,
        "unit": "degC",
    }
    base.update(overrides)
    return base


def stored(ingestor: Ingestor) -> list[tuple]:
    return sorted((tuple(key), ts, value) for _, key, ts, value in iter_stored(ingestor.store.path))


BAD_ITEMS = [
    reading(value=float("nan")),
    reading(value="hot"),
    reading(metric="humidity", unit="%"),
    reading(unit="degF"),
    reading(timestamp=1_700_000_000),  # seconds, not milliseconds
    reading(timestamp=NOW_MS + 3_600_000),  # an hour in the future
    reading(machine_id="bad id with spaces"),
    reading(value=1e9),  # outside the physically valid range
    {k: v for k, v in reading().items() if k != "unit"},
    reading(timestamp=-5),
    reading(timestamp=True),
]


def test_fast_path_matches_the_core_on_good_and_bad_payloads(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    validator = Validator(catalog, clock=lambda: NOW_MS / 1000)
    payloads = [json.dumps([reading(value=50 + i) for i in range(5)]).encode()]
    payloads += [json.dumps([reading(), bad, reading(value=60.5)]).encode() for bad in BAD_ITEMS]
    payloads += [json.dumps(reading(value=61.0)).encode()]
    payloads += [json.dumps({"v": 1, "readings": [reading(value=62.0)]}).encode()]
    legacy = reading(value=63.0)
    legacy["metric_type"] = legacy.pop("metric")
    payloads += [json.dumps([legacy]).encode(), b"{not json", b"[]", b"42"]
    payloads = [p.replace(b"NaN", b"NaN") for p in payloads]

    ingestor = make_ingestor(tmp_path, catalog)
    result = ingestor.process([Incoming("t", p, NOW_MS) for p in payloads])

    expected_readings = []
    expected_reasons = []
    for payload in payloads:
        outcome = validate_json(payload, validator)
        expected_readings += [
            (tuple(outcome.columns.series[i]), int(ts), float(v))
            for i, ts, v in zip(
                outcome.columns.series_index,
                outcome.columns.timestamp,
                outcome.columns.value,
                strict=False,
            )
        ]
        expected_reasons += [r.reason for r in outcome.rejects]
    assert stored(ingestor) == sorted(expected_readings)
    quarantined = ingestor.store.quarantined()
    assert sorted(q.reason for q in quarantined) == sorted(expected_reasons)
    assert result.quarantined == len(expected_reasons) == ingestor.store.counters["quarantined"]
    assert all(q.reason and q.payload for q in quarantined)


def test_compact_batches_are_validated_columnwise_and_stored(
    tmp_path: Path, catalog: MetricCatalog, simulate
) -> None:
    columns = simulate(machines=2, minutes=5)
    ingestor = make_ingestor(tmp_path, catalog)
    ingestor.validator = Validator(catalog)  # simulated data is in the recent past
    result = ingestor.process([Incoming("t", encode_batch(columns), NOW_MS)])
    assert result.stored == len(columns)
    assert len(stored(ingestor)) == len(columns)


def test_redelivered_payloads_are_dropped_as_duplicates(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    ingestor = make_ingestor(tmp_path, catalog)
    payload = json.dumps([reading()]).encode()
    acks: list[int] = []
    ingestor.process([Incoming("t", payload, NOW_MS, lambda: acks.append(1))])
    ingestor.store.close()
    again = make_ingestor(tmp_path, catalog)  # restart, then the broker redelivers
    result = again.process([Incoming("t", payload, NOW_MS, lambda: acks.append(2))])
    assert result.duplicates == 1
    assert result.stored == 0
    assert acks == [1, 2]  # acknowledged, so the broker stops redelivering
    assert len(stored(again)) == 1


def test_threshold_alerts_are_raised_during_ingest(tmp_path: Path, catalog: MetricCatalog) -> None:
    alerts: list = []
    ingestor = make_ingestor(tmp_path, catalog, alerts)
    hot = [reading(timestamp=NOW_MS - 10_000 + i, value=120.0 + i) for i in range(4)]
    result = ingestor.process([Incoming("t", msgspec.json.encode(hot), NOW_MS)])
    assert [(a.anomaly_type, a.state) for a in alerts] == [("THRESHOLD_HIGH", "RAISED")]
    assert result.anomalies == alerts
    assert [p.anomaly_id for p in ingestor.store.pending_anomalies()] == [alerts[0].anomaly_id]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
reading_like = st.fixed_dictionaries(
    {},
    optional={
        "timestamp": st.one_of(
            st.integers(), st.floats(allow_nan=True), st.text(max_size=5), st.just(NOW_MS - 1000)
        ),
        "factory_id": st.one_of(st.text(max_size=10), st.integers(), st.just("F1")),
        "machine_id": st.one_of(st.text(max_size=10), st.just("M1")),
        "sensor_id": st.one_of(st.text(max_size=10), st.just("S1")),
        "metric": st.sampled_from(["temperature", "rpm", "humidity", "", "x" * 70]),
        "metric_type": st.sampled_from(["temperature", "rpm"]),
        "value": st.one_of(
            st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=4)
        ),
        "unit": st.sampled_from(["degC", "rpm", "degF", ""]),
    },
)


def _payload(draw_value) -> bytes:
    return json.dumps(draw_value, allow_nan=True).encode()


payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(_payload),
    reading_like.map(_payload),
    st.lists(reading_like, max_size=6).map(_payload),
    st.lists(reading_like, max_size=3).map(lambda items: _payload({"v": 1, "readings": items})),
    st.binary(max_size=64).map(lambda tail: b"IIOTB\x01\x01\x00" + tail),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(payloads, min_size=1, max_size=8))
def test_fuzzed_input_never_crashes_and_every_reject_is_quarantined(
    tmp_path_factory: pytest.TempPathFactory, catalog: MetricCatalog, batch: list[bytes]
) -> None:
    ingestor = make_ingestor(tmp_path_factory.mktemp("fuzz"), catalog)
    acks: list[int] = []
    items = [Incoming("t", p, NOW_MS, lambda: acks.append(1)) for p in batch]
    result = ingestor.process(items)
    assert len(acks) == len(batch)
    validator = Validator(catalog, clock=lambda: NOW_MS / 1000)
    expected_rejects = 0
    expected_accepted = 0
    seen = set()
    for payload in batch:
        if payload in seen:
            continue
        seen.add(payload)
        if payload.startswith(b"IIOTB"):
            from iiot.wire import validate_batch

            outcome = validate_batch(payload, validator)[1]
        else:
            outcome = validate_json(payload, validator)
        expected_rejects += len(outcome.rejects)
        expected_accepted += outcome.accepted
    assert result.quarantined == expected_rejects
    assert result.stored == expected_accepted
    for item in ingestor.store.quarantined(limit=10_000):
        assert item.reason
    for _, _, _, value in iter_stored(ingestor.store.path):
        assert math.isfinite(value)
    ingestor.store.close()


def test_huge_payload_is_quarantined_not_parsed(tmp_path: Path, catalog: MetricCatalog) -> None:
    ingestor = make_ingestor(tmp_path, catalog)
    huge = b"[" + b",".join([json.dumps(reading()).encode()] * 60_000) + b"]"
    assert len(huge) > 8 * 1024 * 1024
    result = ingestor.process([Incoming("t", huge, NOW_MS)])
    assert result.stored == 0
    assert result.quarantined == 1
    [item] = ingestor.store.quarantined()
    assert "exceeds" in item.reason
    assert len(item.payload) <= 64 * 1024


def test_values_are_stored_bit_for_bit(tmp_path: Path, catalog: MetricCatalog) -> None:
    ingestor = make_ingestor(tmp_path, catalog)
    values = [55.25, 0.1 + 0.2, 99.99999999, 21.0]
    items = [reading(timestamp=NOW_MS - 1000 + i, value=v) for i, v in enumerate(values)]
    ingestor.process([Incoming("t", json.dumps(items).encode(), NOW_MS)])
    got = [v for *_, v in iter_stored(ingestor.store.path)]
    assert np.array(got).view(np.int64).tolist() == np.array(values).view(np.int64).tolist()
    assert Reading  # the contract type the fast path mirrors
