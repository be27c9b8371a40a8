"""Fixtures for the SensorBuffer tests: real mosquitto brokers on 127.0.0.1, simulated data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from iiot.catalog import MetricCatalog
from iiot.contract import ReadingColumns
from iiot.localbroker import BrokerError, Mosquitto
from iiot.simulator import FleetConfig, FleetSimulator


@pytest.fixture
def broker_factory() -> Iterator[Callable[..., Mosquitto]]:
    """Private mosquitto brokers on 127.0.0.1 (iiot.localbroker), stopped by PID after the test."""
    brokers: list[Mosquitto] = []

    def make(*, persistent: bool = False) -> Mosquitto:
        try:
            broker = Mosquitto.create(persistent=persistent)
        except BrokerError as error:
            pytest.fail(str(error))
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()


def simulated(
    catalog: MetricCatalog,
    *,
    machines: int = 4,
    minutes: float = 10,
    interval_ms: int = 1000,
    seed: int = 3,
) -> ReadingColumns:
    """A slice of simulated readings ending an hour ago (inside the clock-skew window)."""
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    config = FleetConfig(
        factories=1,
        machines_per_factory=machines,
        hours=minutes / 60,
        interval_ms=interval_ms,
        seed=seed,
        start=start,
    )
    return ReadingColumns.concat(list(FleetSimulator(config, catalog).chunks()))


@pytest.fixture(scope="session")
def simulate(catalog: MetricCatalog) -> Callable[..., ReadingColumns]:
    """simulate(machines=, minutes=, interval_ms=, seed=) -> ReadingColumns."""
    return lambda **kwargs: simulated(catalog, **kwargs)
