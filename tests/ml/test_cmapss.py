"""C-MAPSS for any subset: files named by the subset, operating conditions, informative sensors,
the report's figures; on small synthetic files shaped like each subset (the real FD001 run is
`iiot ml cmapss`, not a unit test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ml_pipeline.cli import app
from ml_pipeline.cmapss import (
    Candidate,
    SensorFrame,
    operating_conditions,
    read_engines,
    run,
    subset_files,
)

# (altitude kft, Mach, throttle) of the six conditions of FD002 / FD004, with the files' jitter
CONDITIONS = np.array(
    [
        [0.0, 0.0, 100.0],
        [10.0, 0.25, 100.0],
        [20.0, 0.7, 100.0],
        [25.0, 0.62, 60.0],
        [35.0, 0.84, 100.0],
        [42.0, 0.84, 100.0],
    ]
)
DEGRADING = (2, 3, 4, 7, 11, 12, 15)  # sensors that move with wear; 1, 5, 10 stay flat


def engine_rows(unit: int, cycles: int, life: int, conditions: int, rng) -> np.ndarray:
    rows = []
    for cycle in range(1, cycles + 1):
        c = rng.integers(conditions)
        settings = CONDITIONS[c] + rng.normal(0, [0.002, 0.0002, 0.0], 3)
        wear = (cycle / life) ** 2
        sensors = np.full(21, 100.0) + 50.0 * c  # every sensor depends on the condition
        for s in range(1, 22):
            if s in (1, 5, 10):
                continue
            sensors[s - 1] += rng.normal(0, 0.5)
            if s in DEGRADING:
                sensors[s - 1] += 8.0 * wear
        rows.append([unit, cycle, *settings, *sensors])
    return np.array(rows)


def write_subset(folder: Path, subset: str, *, conditions: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    train, test, rul = [], [], []
    for unit in range(1, 21):
        life = int(rng.integers(90, 140))
        train.append(engine_rows(unit, life, life, conditions, rng))
        seen = int(rng.integers(55, life - 1))
        test.append(engine_rows(unit, seen, life, conditions, rng))
        rul.append(life - seen)
    np.savetxt(folder / f"train_{subset}.txt", np.vstack(train), fmt="%.4f")
    np.savetxt(folder / f"test_{subset}.txt", np.vstack(test), fmt="%.4f")
    np.savetxt(folder / f"RUL_{subset}.txt", np.array(rul), fmt="%d")


QUICK = [
    Candidate("classifier", True, 3, 30),
    Candidate("regressor", True, 3, 30),
]


@pytest.mark.parametrize(("subset", "conditions"), [("FD002", 6), ("FD003", 1), ("FD004", 6)])
def test_any_subset_runs_with_its_own_files(tmp_path: Path, subset: str, conditions: int):
    write_subset(tmp_path, subset, conditions=conditions)
    figures = run(
        tmp_path,
        subset=subset,
        folds=2,
        candidates=QUICK,
        max_bins=(64, 256),
        bootstrap=50,
        compile_check=False,
    )
    assert figures["subset"] == subset
    assert subset in figures["protocol"]
    assert figures["operating_conditions"] == conditions
    assert figures["sensors"] == [f"s{s}" for s in range(1, 22) if s not in (1, 5, 10)]
    assert figures["test_engines"] == 20
    rul = figures["rul_rmse"]
    assert rul["engines"] == 20
    for truth in ("clipped_truth", "raw_truth"):
        low, high = rul[truth]["rmse_ci95"]
        assert low <= rul[truth]["rmse"] <= high
    # max_bin was cross-validated for the chosen candidates, each with its threshold
    bins = {(e["kind"], e["max_bin"]) for e in figures["cross_validation"]}
    assert ("regressor", 256) in bins
    assert (figures["chosen"]["kind"], 256) in bins
    assert figures["chosen"]["max_bin"] in (64, 256)
    assert all("cut" in e for e in figures["cross_validation"])
    assert figures["classification"]["f1_ci95"] is not None


def test_conditions_are_standardized_away_and_flat_sensors_dropped(tmp_path: Path):
    write_subset(tmp_path, "FD002", conditions=6, seed=3)
    train = read_engines(tmp_path / "train_FD002.txt")
    frame = SensorFrame.fit(train)
    assert 1 not in frame.sensors
    assert 10 not in frame.sensors
    assert len(frame.per_condition) == 6
    engine = train[1]
    raw = engine[:, 4 + frame.sensors[0]]
    standardized = frame.values(engine)[:, 0]
    # raw values jump by 50 between conditions; standardized ones do not
    assert raw.std() > 20
    assert standardized.std() < 3
    codes = operating_conditions(CONDITIONS + np.array([0.004, -0.0003, 0.0]))
    assert len(set(codes.tolist())) == 6
    single = SensorFrame.fit({1: engine_rows(1, 50, 50, 1, np.random.default_rng(1))})
    assert single.per_condition == {}  # one condition: values pass through unchanged


def test_missing_files_and_unknown_subsets_are_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"train_FD003\.txt"):
        subset_files(tmp_path, "FD003")
    with pytest.raises(ValueError, match="unknown subset 'FD009'"):
        subset_files(tmp_path, "FD009")
    result = CliRunner().invoke(app, ["cmapss", "--data", str(tmp_path), "--subset", "fd004"])
    assert result.exit_code == 1
    assert "test_FD004.txt" in " ".join(result.output.split())
