"""The connected run's training set export (`models.export_training_set`) from the lake."""

from __future__ import annotations

from pathlib import Path

import pytest

from iiot.catalog import MetricCatalog
from local_platform.connected import models
from local_platform.connected.plan import Plan
from tests.connected.test_anomaly_detector import _write_silver


def test_a_history_no_longer_than_the_models_lag_is_a_lifecycle_error(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    """`iiot demo --history-hours 24` (the model's lag is 24 h): no reading before the first
    model's cut-off. The lifecycle reports it and the run goes on without a model; before, the
    export took the minimum of no timestamps and the whole run crashed."""
    plan = Plan(work_dir=tmp_path, factories=1, machines_per_factory=1, hours=1.0,
                history_hours=2, model_lag_hours=2, malformed_rate=0.0)  # fmt: skip
    plan.write()
    _write_silver(plan, catalog)
    cut_off = plan.live_start_ms - plan.model_lag_hours * 3_600_000
    with pytest.raises(models.LifecycleError, match=r"history \(2 h\) must be longer than the"):
        models.export_training_set(plan, tmp_path / "v1", cut_off)
    # an hour later there is history to train on
    figures = models.export_training_set(plan, tmp_path / "v1", cut_off + 3_600_000)
    assert figures["readings"] > 0
    assert (tmp_path / "v1" / "manifest.json").is_file()
