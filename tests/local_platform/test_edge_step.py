"""The edge step of `make demo` runs end to end on a small fleet and reports its figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from iiot.catalog import MetricCatalog
from local_platform.demo import DemoContext
from local_platform.simulator import FleetConfig
from local_platform.steps.edge import edge_step


@pytest.mark.slow
def test_edge_step_buffers_uploads_and_quarantines(tmp_path: Path, catalog: MetricCatalog) -> None:
    context = DemoContext(
        work_dir=tmp_path,
        fleet=FleetConfig(
            factories=1, machines_per_factory=3, hours=1, malformed_rate=0.01, seed=4
        ),
        catalog=catalog,
    )
    figures = edge_step(context)
    assert (
        figures["readings uploaded (unique batches)"]
        == figures["readings buffered (committed, incl. 3 probe)"]
    )
    assert figures["readings buffered (committed, incl. 3 probe)"] > 0
    assert figures["backlog left"] == 0
    assert (
        figures["quarantined (malformed + sensor faults)"]
        >= figures["malformed payloads published"]
        > 0
    )
    assert figures["wire bytes/reading"] < 15
    assert figures["threshold alerts (local)"] >= 1
    assert figures["local alert latency ms (probe)"] is not None
