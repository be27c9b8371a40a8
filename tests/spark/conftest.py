"""Fixtures of the lake tests: one Sail server and one classic PySpark session per test run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# gRPC's fork handlers (Spark Connect's client) can abort a child forked while a stream is
# polled (tests/poison.py's run_limited forks to set its memory limit before exec).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

pytest.importorskip("pyspark")
pytest.importorskip("pysail")


@pytest.fixture(scope="session")
def sail() -> Iterator[Any]:
    """A SparkSession on a Sail server started on 127.0.0.1 (free port), stopped at the end."""
    from spark_jobs.engine import sail_session

    with sail_session() as spark:
        yield spark


@pytest.fixture(scope="session")
def classic() -> Iterator[Any]:
    """Classic local PySpark on the JVM (no Delta jars: transforms on in-memory data only)."""
    from spark_jobs.engine import classic_session, use_connect

    spark = classic_session()
    use_connect(True)  # Sail is the default engine of the other tests
    yield spark
    spark.stop()


@pytest.fixture(params=["sail", "classic"])
def spark(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Each transform test runs on both engines."""
    from spark_jobs.engine import use_connect

    session = request.getfixturevalue(request.param)
    use_connect(request.param == "sail")
    yield session
    use_connect(True)


@pytest.fixture(scope="session")
def simulation(tmp_path_factory: pytest.TempPathFactory, catalog: Any) -> Path:
    """A small simulated run (2 factories x 2 machines x 3 hours, 1% malformed JSON)."""
    from local_platform.simulator import FleetConfig, FleetSimulator, write_simulation

    out = tmp_path_factory.mktemp("simulation")
    config = FleetConfig(factories=2, machines_per_factory=2, hours=3, seed=7, malformed_rate=0.01)
    write_simulation(FleetSimulator(config, catalog), out, formats=("parquet", "jsonl"))
    return out
