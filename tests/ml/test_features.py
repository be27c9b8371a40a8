"""One feature definition, two computations: batch (training) and incremental (gateway)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge_runtime.features import (
    DAY_MS,
    FeatureSpec,
    MachineFeatureState,
    MachineInfo,
    batch_machine_features,
)
from iiot.catalog import MetricCatalog
from ml_pipeline.dataset import default_spec, read_history, read_streams


def incremental(spec, stream_t, stream_m, stream_v, machine, maintenance):  # type: ignore[no-untyped-def]
    state = MachineFeatureState(spec, machine, maintenance)
    rows = np.empty((len(stream_t), len(spec.names)))
    for i, (t, m, v) in enumerate(
        zip(stream_t.tolist(), stream_m.tolist(), stream_v.tolist(), strict=True)
    ):
        state.update(t, m, v)
        rows[i] = state.vector
    return rows


def assert_same(batch: np.ndarray, online: np.ndarray) -> None:
    assert batch.shape == online.shape
    assert (np.isnan(batch) == np.isnan(online)).all(), "missing features differ"
    np.testing.assert_allclose(online, batch, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_batch_and_incremental_features_are_equal_on_a_simulated_stream(
    run_dir, catalog: MetricCatalog
) -> None:
    spec = default_spec()
    history = read_history(run_dir)
    streams = list(read_streams(run_dir, history, catalog))[:3]
    assert streams, "the simulation produced no streams"
    for stream in streams:
        maintenance = history.maintenance_completed.get(stream.machine.machine_id, [])
        batch = batch_machine_features(
            spec, stream.timestamp, stream.metric, stream.value, stream.machine, maintenance
        )
        online = incremental(
            spec, stream.timestamp, stream.metric, stream.value, stream.machine, maintenance
        )
        assert_same(batch, online)
        # the stream really exercises the definition: full windows, trends, maintenance
        assert np.isfinite(batch[-1]).sum() == len(spec.names) - (0 if maintenance else 1)


def test_equal_on_hard_streams_flat_sensor_ties_gaps_and_unknown_metrics() -> None:
    spec = FeatureSpec(
        metrics=("a", "b"),
        count_windows=(3, 8),
        time_windows_minutes=(5,),
        residuals=(("a", "b"), ("b", "a")),
        residual_baseline_hours=0.5,
        residual_smooth_minutes=2.0,
    )
    rng = np.random.default_rng(3)
    n = 4000
    t = np.sort(rng.integers(0, n * 20_000, n)).astype(np.int64)  # ties and uneven gaps
    m = rng.choice(np.array(["a", "b", "other"]), n)
    v = rng.normal(1500.0, 3.0, n)
    v[500:900] = 1500.25  # a stuck sensor: std exactly 0, no cancellation noise
    v[2000:2100] *= 100.0  # a jump of two orders of magnitude
    machine = MachineInfo("M", "CP-400", installed_ms=-400 * DAY_MS)
    maintenance = [int(t[1000]), int(t[3000]) + 1]
    batch = batch_machine_features(spec, t, m, v, machine, maintenance)
    online = incremental(spec, t, m, v, machine, maintenance)
    assert_same(batch, online)
    std_8 = spec.names.index("a__std_8")
    flat = (np.arange(n) > 700) & (np.arange(n) < 880) & (m == "a")
    assert (online[flat, std_8] == 0).all() or np.abs(online[flat, std_8]).max() < 1e-9


def test_first_readings_give_partial_windows_and_missing_values() -> None:
    spec = FeatureSpec(metrics=("a",), count_windows=(3,), time_windows_minutes=(1,))
    state = MachineFeatureState(spec, MachineInfo("M"))
    assert np.isnan(state.vector).all()
    state.update(0, "a", 2.0)
    named = dict(zip(spec.names, state.vector.tolist(), strict=True))
    assert named["a__last"] == 2.0
    assert named["a__mean_3"] == 2.0
    assert np.isnan(named["a__std_3"])
    assert np.isnan(named["a__slope_3"])
    state.update(1000, "a", 4.0)
    state.update(2000, "a", 6.0)
    state.update(3000, "a", 8.0)
    named = dict(zip(spec.names, state.vector.tolist(), strict=True))
    assert named["a__mean_3"] == pytest.approx(6.0)
    assert named["a__slope_3"] == pytest.approx(2.0)
    assert named["a__count_1min"] == 4.0
    assert named["a__max_1min"] == 8.0
    assert np.isnan(named["hours_since_maintenance"])  # no maintenance known
    assert not state.update(4000, "humidity", 1.0)


def test_spec_round_trips_and_rejects_nonsense() -> None:
    spec = default_spec()
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert len(spec.names) == len(set(spec.names))
    with pytest.raises(ValueError, match="count windows"):
        FeatureSpec(metrics=("a",), count_windows=(1,))


def _pump(hours: float, interval_ms: int, seed: int, a: float, b: float, extra=None):  # type: ignore[no-untyped-def]
    """A y that is a + b x plus noise, x following shifts of load, readings interleaved."""
    rng = np.random.default_rng(seed)
    t = np.arange(0, int(hours * 3_600_000), interval_ms, dtype=np.int64)
    hour = (t / 3_600_000) % 24
    x = np.where(hour < 8, 1100.0, np.where(hour < 16, 1400.0, 1300.0)) + rng.normal(0, 4, len(t))
    y = a + b * x + rng.normal(0, 0.3, len(t))
    if extra is not None:
        y += extra(t)
    stream_t = np.repeat(t, 2)
    stream_m = np.tile(np.array(["x", "y"]), len(t))
    stream_v = np.column_stack([x, y]).reshape(-1)
    return stream_t, stream_m, stream_v


RESIDUAL_SPEC = FeatureSpec(
    metrics=("x", "y"), count_windows=(6,), time_windows_minutes=(60,), residuals=(("y", "x"),)
)


@pytest.mark.parametrize(("a", "b"), [(20.0, 0.03), (-5.0, 0.08), (300.0, -0.1)])
def test_residual_is_zero_whatever_line_the_machine_follows(a: float, b: float) -> None:
    t, m, v = _pump(72, 10_000, 5, a, b)
    feature = RESIDUAL_SPEC.names.index("y__resid_x")
    batch = batch_machine_features(RESIDUAL_SPEC, t, m, v, MachineInfo("M"))
    late = batch[len(t) // 3 :, feature]
    assert np.isfinite(late).all()
    # within a few noise sigmas (0.3) of zero, while y itself swings by b * 300 over shifts
    assert np.abs(late).max() < 0.5
    assert np.ptp(v[m == "y"]) > 8


def test_residual_shows_a_rise_the_load_does_not_explain_and_follows_slow_drift() -> None:
    hour_ms = 3_600_000
    fault_start = 60 * hour_ms

    def fault(t):  # type: ignore[no-untyped-def]
        # calibration drift of 2 degrees a day throughout, a fault growing over the last 12 h
        progress = np.clip((t - fault_start) / (12 * hour_ms), 0, None)
        return 2.0 * t / (24 * hour_ms) + 15.0 * progress**2

    t, m, v = _pump(72, 10_000, 6, 20.0, 0.03, fault)
    feature = RESIDUAL_SPEC.names.index("y__resid_x")
    online = incremental(RESIDUAL_SPEC, t, m, v, MachineInfo("M"), [])[:, feature]
    before = online[(t > 24 * hour_ms) & (t < fault_start)]
    at_failure = online[-1]
    # the baseline follows the drift (5 degrees by the fault) with a lag of the drift rate
    # times the time constants' difference (2 / 24 * 23.5 = 1.96 degrees), never more
    assert np.abs(before).max() < 2.2
    assert at_failure > 10.0  # most of the 15 degrees the fault added shows


def test_residual_waits_for_both_sensors_and_a_spread_of_load() -> None:
    state = MachineFeatureState(RESIDUAL_SPEC, MachineInfo("M"))
    feature = RESIDUAL_SPEC.names.index("y__resid_x")
    state.update(0, "y", 50.0)  # no x yet
    assert np.isnan(state.vector[feature])
    for i in range(1, 100):
        state.update(i * 10_000, "x", 1400.0)  # a constant load: no line to fit
        state.update(i * 10_000, "y", 50.0)
    assert np.isnan(state.vector[feature])
    with pytest.raises(ValueError, match="residual pair"):
        FeatureSpec(metrics=("x",), residuals=(("x", "y"),))


@pytest.mark.parametrize("y_first", [False, True])
def test_a_stopped_pump_is_left_out_of_the_residual_line(y_first: bool) -> None:
    """A stop (a repair, a planned job) reads speed 0 and the ambient temperature: far off the
    line of the operating points. Folded in, it bends the line for a day after the restart;
    with the floor it is left out, and the residual holds its value through the stop. Where y
    comes before x at each instant (the simulator's order for temperature and rpm), the stop's
    first y pairs with the last running x and is folded in: one point of the stop."""
    hour_ms = 3_600_000
    stop = (40 * hour_ms, 46 * hour_ms)
    t, m, v = _pump(72, 10_000, 10, -20.0, 0.05)
    if y_first:  # each instant's two readings swapped: y, then x
        v = v.reshape(-1, 2)[:, ::-1].reshape(-1)
        m = m.reshape(-1, 2)[:, ::-1].reshape(-1)
    stopped = (t >= stop[0]) & (t < stop[1])
    speed = stopped & (m == "x")
    v[speed] = np.abs(np.random.default_rng(11).normal(0, 4, speed.sum()))  # a sensor's noise
    v[stopped & (m == "y")] = 22.0  # the ambient: the line predicts -20 there
    floored = replace(RESIDUAL_SPEC, residual_x_floor=100.0)
    feature = RESIDUAL_SPEC.names.index("y__resid_x")
    plain = incremental(RESIDUAL_SPEC, t, m, v, MachineInfo("M"), [])[:, feature]
    online = incremental(floored, t, m, v, MachineInfo("M"), [])
    assert_same(batch_machine_features(floored, t, m, v, MachineInfo("M")), online)
    after = (t > stop[1] + hour_ms) & (t < stop[1] + 24 * hour_ms)
    assert np.abs(plain[after]).max() > 3.0  # the stop bends the line for hours
    assert np.abs(online[after, feature]).max() < 0.3  # noise only
    # through the stop the residual holds one value: the last operating pair's, or with y
    # first the stop's first y's (42 degrees off the line, a fraction of it in the half-hour
    # mean of some 180 readings)
    first = int(np.argmax(stopped))
    held = online[stopped, feature]
    assert (held == held[-1]).all()
    if y_first:
        assert 0.05 < abs(held[-1] - online[first - 1, feature]) < 0.5
    else:
        assert held[-1] == online[first - 1, feature]


def test_the_floor_is_in_one_metrics_unit_and_an_unset_floor_is_not_written() -> None:
    floored = replace(RESIDUAL_SPEC, residual_x_floor=100.0)
    assert FeatureSpec.from_dict(floored.to_dict()) == floored
    with pytest.raises(ValueError, match="finite"):
        replace(RESIDUAL_SPEC, residual_x_floor=float("nan"))
    with pytest.raises(ValueError, match="same x"):
        FeatureSpec(metrics=("a", "b"), residuals=(("a", "b"), ("b", "a")), residual_x_floor=1.0)
    # a spec without the floor writes exactly the settings gateways older than the floor know
    # (`from_dict` there refuses any other key), so they take its models
    assert set(default_spec().to_dict()) == {
        *("metrics", "count_windows", "time_windows_minutes", "maintenance"),
        *("machine_models", "version", "residuals", "residual_baseline_hours"),
        *("residual_smooth_minutes", "residual_daily_cycle"),
    }
    assert FeatureSpec.from_dict(RESIDUAL_SPEC.to_dict()).residual_x_floor is None


@pytest.mark.parametrize("daily_cycle", [False, True])
def test_floored_batch_equals_gateway_on_a_hard_stream(daily_cycle: bool) -> None:
    """Ties in any metric order, x exactly at the floor, a series that starts stopped, gaps."""
    rng = np.random.default_rng(12)
    n = 6000
    t = np.sort(rng.integers(0, 3 * DAY_MS, n)).astype(np.int64)
    m = rng.choice(np.array(["x", "y", "other"]), n)
    v = rng.normal(1510.0, 8.0, n)
    v[rng.random(n) < 0.05] = 1500.0  # at the floor: left out (the floor is exclusive)
    v[:300] = 0.0  # starts stopped
    v[3000:3400] = 0.0  # a stop in the middle
    spec = replace(
        RESIDUAL_SPEC,
        residual_x_floor=1500.0,
        residual_baseline_hours=2.0,
        residual_daily_cycle=daily_cycle,
    )
    machine = MachineInfo("M", "CP-400", installed_ms=-400 * DAY_MS)
    online = incremental(spec, t, m, v, machine, [int(t[1000])])
    assert_same(batch_machine_features(spec, t, m, v, machine, [int(t[1000])]), online)
    # the floor is exclusive: a y whose latest x is exactly at it does not move the residual
    feature = spec.names.index("y__resid_x_day" if daily_cycle else "y__resid_x")
    latest_x = np.maximum.accumulate(np.where(m == "x", np.arange(n), -1))
    at_floor = np.flatnonzero((m == "y") & (latest_x >= 0) & (v[np.maximum(latest_x, 0)] == 1500.0))
    at_floor = at_floor[at_floor > 400]
    assert len(at_floor) > 10
    np.testing.assert_array_equal(online[at_floor, feature], online[at_floor - 1, feature])


DAILY_SPEC = replace(RESIDUAL_SPEC, residual_daily_cycle=True, version=3)


def _ambient(t):  # type: ignore[no-untyped-def]
    """The day's ambient swing: 4 degrees either side, warmest at 15:00 (as the simulator's)."""
    return 4.0 * np.sin(2 * np.pi * ((t / 3_600_000) % 24 - 9) / 24)


def test_daily_cycle_takes_the_ambient_swing_out_of_the_residual_and_keeps_a_fault() -> None:
    hour_ms = 3_600_000
    fault_start = 60 * hour_ms

    def ambient_and_fault(t):  # type: ignore[no-untyped-def]
        return _ambient(t) + 6.0 * np.clip((t - fault_start) / (12 * hour_ms), 0, None) ** 2

    t, m, v = _pump(72, 10_000, 7, 20.0, 0.03, ambient_and_fault)
    feature = DAILY_SPEC.names.index("y__resid_x_day")
    daily = incremental(DAILY_SPEC, t, m, v, MachineInfo("M"), [])[:, feature]
    plain = incremental(RESIDUAL_SPEC, t, m, v, MachineInfo("M"), [])[:, feature]
    steady = (t > 30 * hour_ms) & (t < fault_start)
    # on the speed alone the residual keeps most of the 8-degree swing; with the cycle, noise
    assert np.ptp(plain[steady]) > 4.0
    assert np.abs(daily[steady]).max() < 0.6
    # the fault's last 12 h (6 degrees; the 24 h baseline follows part of it) stand out from
    # that quiet background, where on the speed alone they are smaller than the daily swing
    assert daily[-1] > 2.0
    assert daily[-1] > 5 * np.abs(daily[steady]).max()
    assert plain[-1] < np.ptp(plain[steady])


def test_daily_cycle_is_the_plain_line_on_a_few_hours_and_batch_equals_gateway() -> None:
    # the first hours of a series (a gateway restarted, a new model): the cycle has covered an
    # arc of the day only and is shrunk away, so a rise of a degree an hour shows as on the
    # plain line instead of being taken for the cycle
    hour_ms = 3_600_000
    t, m, v = _pump(6, 10_000, 8, 20.0, 0.03, lambda t: t / hour_ms)
    daily = incremental(DAILY_SPEC, t, m, v, MachineInfo("M"), [])
    plain = incremental(RESIDUAL_SPEC, t, m, v, MachineInfo("M"), [])
    daily = daily[:, DAILY_SPEC.names.index("y__resid_x_day")]
    plain = plain[:, RESIDUAL_SPEC.names.index("y__resid_x")]
    assert (np.isfinite(daily) == np.isfinite(plain)).all()
    later = t > 2 * hour_ms
    assert plain[later].min() > 0.5  # the rise shows on the plain line
    np.testing.assert_allclose(daily[later], plain[later], rtol=0.05)
    # a spec-3 model's features have names of their own: older gateway code refuses them
    assert "y__resid_x_day" in DAILY_SPEC.names
    assert "y__resid_x" not in DAILY_SPEC.names
    # the hard stream of the test above (ties, gaps, a stuck sensor, a jump), with the cycle
    rng = np.random.default_rng(9)
    n = 6000
    t = np.sort(rng.integers(0, 3 * DAY_MS, n)).astype(np.int64)
    m = rng.choice(np.array(["x", "y", "other"]), n)
    v = rng.normal(1500.0, 3.0, n) + _ambient(t)
    v[500:900] = 1500.25
    v[2000:2100] *= 100.0
    machine = MachineInfo("M", "CP-400", installed_ms=-400 * DAY_MS)
    spec = replace(DAILY_SPEC, residuals=(("y", "x"), ("x", "y")), residual_baseline_hours=2.0)
    assert_same(
        batch_machine_features(spec, t, m, v, machine, [int(t[1000])]),
        incremental(spec, t, m, v, machine, [int(t[1000])]),
    )
    # a model trained before the cycle existed keeps its plain line
    old = DAILY_SPEC.to_dict()
    del old["residual_daily_cycle"]
    assert not FeatureSpec.from_dict(old).residual_daily_cycle


def test_a_spec_with_a_setting_this_code_does_not_know_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A model trained by newer code than the gateway's: its manifest is refused (the gateway
    keeps the model it has) instead of scored on features computed another way."""
    import json

    from edge_runtime.model_runtime import Manifest, ModelError

    newer = {**DAILY_SPEC.to_dict(), "residual_weekly_cycle": True}
    with pytest.raises(ValueError, match="residual_weekly_cycle"):
        FeatureSpec.from_dict(newer)
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {
                "model_version": "9",
                "feature_names": DAILY_SPEC.names,
                "feature_spec": newer,
                "xgboost_model": {"file": "model.json", "sha256": "0"},
            }
        )
    )
    with pytest.raises(ModelError, match="not a valid model manifest"):
        Manifest.read(tmp_path)
