"""The failure predictor's probability as the derived series `failure_probability`: the buffer
stores it from the predictions topic like a reading, bounded by a deadband and a maximum
interval, quarantines a bad one with its reason, and never runs a threshold check on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from failure_predictor.messages import PREDICTIONS, Prediction, encoder, topic
from sensor_buffer.config import ConfigError, from_component_config
from sensor_buffer.derived import METRIC, PredictionSeries
from sensor_buffer.ingest import Incoming, Ingestor
from sensor_buffer.store import Store, iter_stored
from sensor_buffer.thresholds import ThresholdChecker

from iiot.catalog import MetricCatalog
from iiot.contract import SeriesKey, Validator

NOW_MS = 1_790_000_000_000
TOPIC = topic(PREDICTIONS, "F1")


def prediction(p: float, *, ts: int = NOW_MS - 60_000, machine: str = "F1-M001", alert=False):
    """A prediction exactly as the FailurePredictor encodes it."""
    return encoder.encode(
        Prediction(
            factory_id="F1",
            machine_id=machine,
            timestamp=ts,
            probability=p,
            model_version="v7",
            backend="compiled",
            alert=alert,
        )
    )


def make_ingestor(
    path: Path, catalog: MetricCatalog, *, deadband: float = 0.01, interval_s: float = 300
) -> tuple[Ingestor, list]:
    store = Store(path / "buffer.sqlite3", producer="F1/gw", synchronous="NORMAL")
    # every catalog metric's edge limits, the derived one's (none) included
    checker = ThresholdChecker({n: m.edge for n, m in catalog.items()}, store.series.__getitem__)
    alerts: list = []
    series = PredictionSeries(
        catalog[METRIC], deadband=deadband, max_interval_ms=int(interval_s * 1000)
    )
    ingestor = Ingestor(
        store,
        Validator(catalog, clock=lambda: NOW_MS / 1000),
        checker,
        on_alerts=alerts.extend,
        clock=lambda: NOW_MS / 1000,
        predictions=series,
        predictions_topic=TOPIC,
    )
    return ingestor, alerts


def stored(ingestor: Ingestor) -> list[tuple]:
    return sorted((tuple(key), ts, value) for _, key, ts, value in iter_stored(ingestor.store.path))


def test_the_catalog_marks_the_probability_derived_with_no_rule(catalog: MetricCatalog) -> None:
    metric = catalog[METRIC]
    assert metric.derived == "failure_predictor"
    assert metric.unit == "probability"
    assert (metric.valid_range.min, metric.valid_range.max) == (0.0, 1.0)
    assert (metric.stream, metric.rapid_change) == (None, None)
    assert METRIC not in catalog.measured
    assert METRIC not in catalog.edge_threshold_config()


def test_a_prediction_is_stored_as_a_reading_and_raises_no_threshold_alert(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    ingestor, alerts = make_ingestor(tmp_path, catalog)
    # 0.97 would be far beyond any limit of a measured metric; the derived one has none
    result = ingestor.process([Incoming(TOPIC, prediction(0.97, alert=True), NOW_MS)])
    assert (result.accepted, result.stored, result.quarantined) == (1, 1, 0)
    assert stored(ingestor) == [
        (
            tuple(SeriesKey("F1", "F1-M001", "F1-M001-failure_predictor", METRIC, "probability")),
            NOW_MS - 60_000,
            0.97,
        )
    ]
    assert alerts == []
    assert ingestor.store.counters["predictions_converted"] == 1


def test_deadband_and_maximum_interval_bound_what_is_stored(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    ingestor, _ = make_ingestor(tmp_path, catalog, deadband=0.05, interval_s=600)
    start = NOW_MS - 3_600_000
    values = [0.10, 0.11, 0.12, 0.16, 0.14, 0.13, 0.13, 0.13, 0.30]
    # one prediction a minute; then a quiet machine for 11 minutes, then the alert flips
    items = [
        Incoming(TOPIC, prediction(v, ts=start + i * 60_000), NOW_MS) for i, v in enumerate(values)
    ]
    items.append(Incoming(TOPIC, prediction(0.30, ts=start + 19 * 60_000), NOW_MS))
    items.append(Incoming(TOPIC, prediction(0.31, ts=start + 20 * 60_000, alert=True), NOW_MS))
    items.append(Incoming(TOPIC, prediction(0.32, ts=start + 21 * 60_000, alert=True), NOW_MS))
    result = ingestor.process(items[:4])  # the deadband holds across micro-batches too
    result2 = ingestor.process(items[4:])
    kept = [(ts - start) // 60_000 for _, ts, _ in stored(ingestor)]
    # 0: first; 3: moved 0.06 >= 0.05 from 0.10; 8: moved 0.14; 19: 11 min >= 10 since 8;
    # 20: the alert flipped (0.01 would not do)
    assert kept == [0, 3, 8, 19, 20]
    assert result.predictions_suppressed + result2.predictions_suppressed == 7
    assert ingestor.store.counters["predictions_suppressed"] == 7
    assert ingestor.store.counters["predictions_converted"] == 5


def test_machines_have_their_own_deadband(tmp_path: Path, catalog: MetricCatalog) -> None:
    ingestor, _ = make_ingestor(tmp_path, catalog, deadband=0.5)
    items = [
        Incoming(TOPIC, prediction(0.2, machine=m, ts=NOW_MS - 60_000 + i), NOW_MS)
        for i, m in enumerate(["F1-M001", "F1-M002", "F1-M001", "F1-M002"])
    ]
    ingestor.process(items)
    assert sorted(key[1] for key, _, _ in stored(ingestor)) == ["F1-M001", "F1-M002"]


def test_each_machine_has_its_own_sensor_id(tmp_path: Path, catalog: MetricCatalog) -> None:
    """Two machines' probabilities at the same time are two readings: the lake, the contract
    and the connected run's reconciliation identify a reading by (sensor_id, timestamp), so a
    sensor id shared by the fleet would make one machine's probability a copy of another's."""
    ingestor, _ = make_ingestor(tmp_path, catalog)
    ts = NOW_MS - 60_000
    ingestor.process(
        [Incoming(TOPIC, prediction(0.4, machine=m, ts=ts), NOW_MS) for m in ("F1-M001", "F1-M002")]
    )
    rows = stored(ingestor)
    assert sorted((key[2], t) for key, t, _ in rows) == [
        ("F1-M001-failure_predictor", ts),
        ("F1-M002-failure_predictor", ts),
    ]


def test_a_steady_stream_of_predictions_adds_few_readings(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    """A prediction every 10 s for a day, drifting within the noise: the maximum interval
    (5 min) and real moves decide, not the prediction rate."""
    ingestor, _ = make_ingestor(tmp_path, catalog, deadband=0.02, interval_s=300)
    start = NOW_MS - 86_400_000
    items = [
        Incoming(
            TOPIC,
            prediction(round(0.1 + 0.005 * ((i * 7919) % 3 - 1), 6), ts=start + i * 10_000),
            NOW_MS,
        )
        for i in range(8640)
    ]
    for i in range(0, len(items), 500):
        ingestor.process(items[i : i + 500])
    kept = len(stored(ingestor))
    assert kept == 288  # one per 5 minutes: 8,640 predictions -> 288 readings (3.3 %)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (prediction(1.5), "value: failure probability 1.5 of 'F1-M001' is outside [0, 1]"),
        (prediction(-0.01), "value: failure probability -0.01 of 'F1-M001' is outside [0, 1]"),
        # msgspec (the predictor's encoder) writes NaN as null
        (prediction(float("nan")), "prediction: not a prediction message (Expected `float`"),
        (
            json.dumps(json.loads(prediction(0.5)) | {"probability": float("nan")}).encode(),
            "prediction: not a prediction message",
        ),
        (b"not json", "prediction: not a prediction message"),
        (b'{"factory_id": "F1"}', "prediction: not a prediction message (Object missing"),
    ],
)
def test_a_bad_prediction_is_quarantined_with_its_reason(
    tmp_path: Path, catalog: MetricCatalog, payload: bytes, reason: str
) -> None:
    ingestor, _ = make_ingestor(tmp_path, catalog)
    result = ingestor.process([Incoming(TOPIC, payload, NOW_MS)])
    assert (result.stored, result.quarantined) == (0, 1)
    (row,) = ingestor.store._db.execute("SELECT topic, reason, payload FROM quarantine")
    assert row[0] == TOPIC
    assert row[1].startswith(reason)
    assert bytes(row[2]) == payload  # the prediction as it came, for inspection
    # it did not move the deadband: the next good one is the machine's first
    result = ingestor.process([Incoming(TOPIC, prediction(0.5), NOW_MS)])
    assert result.stored == 1


def test_a_redelivered_prediction_is_stored_once(tmp_path: Path, catalog: MetricCatalog) -> None:
    ingestor, _ = make_ingestor(tmp_path, catalog, deadband=0.0)
    payload = prediction(0.4)
    ingestor.process([Incoming(TOPIC, payload, NOW_MS)])
    again = ingestor.process([Incoming(TOPIC, payload, NOW_MS)])
    assert again.duplicates == 1
    assert len(stored(ingestor)) == 1


def test_a_failed_commit_does_not_move_the_deadband(tmp_path: Path, catalog: MetricCatalog) -> None:
    """The disk is full (a real SQLite page limit): the micro-batch is not committed and stays
    unacknowledged; its redelivery must be stored, not held back by a deadband it moved."""
    ingestor, _ = make_ingestor(tmp_path, catalog)
    ingestor.process([Incoming(TOPIC, prediction(0.2, ts=NOW_MS - 120_000), NOW_MS)])
    acked: list[int] = []
    item = Incoming(TOPIC, prediction(0.6), NOW_MS, ack=lambda: acked.append(1))
    db = ingestor.store._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages}")
    many = [
        Incoming(
            "factory/F1/readings",
            json.dumps(
                [
                    {
                        "timestamp": NOW_MS - 100_000 + i,
                        "factory_id": "F1",
                        "machine_id": f"F1-M{i % 50:03d}",
                        "sensor_id": f"s{i}",
                        "metric": "temperature",
                        "value": 50.0,
                        "unit": "degC",
                    }
                    for i in range(2000)
                ]
            ).encode(),
            NOW_MS,
        )
    ]
    with pytest.raises(Exception, match="full"):
        ingestor.process([item, *many])
    assert acked == []
    db.execute("PRAGMA max_page_count=1073741823")
    result = ingestor.process([item])  # the broker's redelivery
    assert (result.stored, result.predictions_suppressed) == (1, 0)
    assert acked == [1]
    assert [v for _, _, v in stored(ingestor)] == [0.2, 0.6]


def test_configuration_of_the_derived_series(tmp_path: Path, catalog: MetricCatalog) -> None:
    config = from_component_config(
        {
            "storePredictions": True,
            "predictionDeadband": 0.05,
            "predictionMaxIntervalSeconds": 60,
        },
        catalog=catalog,
        factory_id="F7",
        data_dir=tmp_path,
    )
    assert config.predictions == "factory/F7/predictions"
    assert config.topics_in == ("factory/F7/readings", "factory/F7/predictions")
    off = from_component_config(
        {"storePredictions": False}, catalog=catalog, factory_id="F7", data_dir=tmp_path
    )
    assert off.topics_in == ("factory/F7/readings",)
    for bad, message in (
        ({"predictionDeadband": 1.5}, "prediction_deadband"),
        ({"predictionDeadband": -0.1}, "prediction_deadband"),
        ({"predictionMaxIntervalSeconds": 0}, "prediction_max_interval_s"),
        ({"storePredictions": "yes"}, "store_predictions"),
        ({"predictionsTopic": "factory/F7/readings"}, "also a readings topic"),
    ):
        with pytest.raises(ConfigError, match=message):
            from_component_config(bad, catalog=catalog, factory_id="F7", data_dir=tmp_path)
