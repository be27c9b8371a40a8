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
    """The `.venv-flink` interpreter (PyFlink's own environment); the stream rules' tests and the
    stream demo step share it. It is created at set-up (`scripts/bootstrap.sh test`, which
    `make test` runs), never by a test: a missing or stale one fails with that command."""
    from kda_sql.flink_env import FlinkEnvError, require_flink_env

    try:
        return require_flink_env()
    except FlinkEnvError as error:
        pytest.fail(str(error), pytrace=False)
