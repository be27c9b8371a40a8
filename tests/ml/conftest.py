"""Small simulated fleets and a model trained on them, shared by the ML tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from iiot.catalog import MetricCatalog
from local_platform.simulator import FleetConfig, FleetSimulator, write_simulation

# Frequent failures so that a few simulated days hold enough of them to learn from.
SMALL_FLEET = FleetConfig(
    factories=2,
    machines_per_factory=5,
    hours=120.0,
    interval_ms=120_000,
    seed=11,
    mtbf_hours=40.0,
    preventive_interval_hours=200.0,
    malformed_rate=0.0,
)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory, catalog: MetricCatalog) -> Path:
    out = tmp_path_factory.mktemp("ml-run")
    write_simulation(FleetSimulator(SMALL_FLEET, catalog), out)
    return out


@pytest.fixture(scope="session")
def feature_table(run_dir: Path, catalog: MetricCatalog):  # type: ignore[no-untyped-def]
    from ml_pipeline.dataset import build_table

    return build_table(run_dir, catalog=catalog, sample_ms=10 * 60_000)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, feature_table) -> Path:  # type: ignore[no-untyped-def]
    from ml_pipeline.train import train_and_evaluate

    out = tmp_path_factory.mktemp("model")
    train_and_evaluate(feature_table, out, rounds=40, version="test-1")
    return out


@pytest.fixture(scope="session")
def compiled_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    from ml_pipeline.compile import compile_model

    out = tmp_path_factory.mktemp("compiled")
    compile_model(model_dir, out, ("x86_64", "aarch64"))
    return out
