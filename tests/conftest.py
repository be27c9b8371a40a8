"""Fixtures shared by every part's tests."""

from __future__ import annotations

import pytest

from iiot.catalog import MetricCatalog, load_catalog


@pytest.fixture(scope="session")
def catalog() -> MetricCatalog:
    """The project's real metric catalog (config/metrics.yaml)."""
    return load_catalog()
