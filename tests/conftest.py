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
    from iiot.localbroker import mosquitto

    with mosquitto() as running:
        yield running
