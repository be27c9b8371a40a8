"""Fixtures shared by every part's tests."""

from __future__ import annotations

import pytest

from iiot.catalog import MetricCatalog, load_catalog


@pytest.fixture(scope="session")
def catalog() -> MetricCatalog:
    """The project's real metric catalog (config/metrics.yaml)."""
    return load_catalog()


@pytest.fixture
def broker():
    """A private mosquitto on a free 127.0.0.1 port, stopped (by PID) after the test."""
    from local_platform.localbroker import mosquitto

    with mosquitto() as running:
        yield running


@pytest.fixture(scope="session")
def flink_python():
    """The `.venv-flink` interpreter (PyFlink's own environment, created once, cached by a stamp
    file); the stream rules' tests and the stream demo step share it."""
    import time

    from kda_sql.flink_env import ensure_flink_env

    began = time.perf_counter()
    python = ensure_flink_env()
    print(f"\n.venv-flink ready in {time.perf_counter() - began:.1f} s")
    return python
