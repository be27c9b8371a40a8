"""The `ml` demo step end to end on a tiny fleet: train, compile, predict on the live run."""

from __future__ import annotations

from pathlib import Path

import pytest

from iiot.catalog import MetricCatalog
from local_platform.demo import DemoContext
from local_platform.simulator import FleetConfig, FleetSimulator, write_simulation


def test_ml_step_trains_compiles_and_predicts_on_the_live_stream(
    tmp_path: Path, catalog: MetricCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    from local_platform.steps import ml as demo

    monkeypatch.setattr(demo, "HISTORY_HOURS", 60.0)
    monkeypatch.setattr(demo, "HISTORY_MTBF_HOURS", 15.0)
    fleet = FleetConfig(factories=1, machines_per_factory=5, hours=6, interval_ms=60_000, seed=4)
    context = DemoContext(work_dir=tmp_path, fleet=fleet, catalog=catalog)
    write_simulation(FleetSimulator(fleet, catalog), context.simulation_dir)
    figures = demo.ml_step(context)
    assert figures["compiled for"] == ["aarch64", "x86_64"]
    assert figures["backend on this gateway"] == "compiled"
    assert figures["live stream readings"] > 0
    # one prediction per 25 readings of a machine
    assert figures["live predictions"] >= figures["live stream readings"] // 25 - 5
    assert figures["failures in history"] > 0
    assert (tmp_path / "ml" / "failure_model" / "manifest.json").exists()
