"""The telemetry stream and the Flink rules sized from measurement (config/environments.py).

The wire size per reading is measured here on the simulator's readings, encoded as the
gateways encode them, at each batch size the config lists: the config's figures must stay
within 15 % of what the encoder produces (`pytest tests/infra/test_sizing.py -k wire -s`
prints the figures). The environments' sizing follows from their workload: prod's 1M
readings/s fit in at most 10 shards (issue 16's goal).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from config.environments import (
    DECODE_EVENTS_PER_SOURCE_SUBTASK,
    DECODE_RULES_EVENTS_PER_SLOT,
    SHARD_BYTES_PER_SECOND,
    SHARD_READ_BYTES_PER_SECOND,
    SHARD_RECORDS_PER_SECOND,
    WIRE_BYTES_PER_READING,
    environments,
)


def wire_bytes_per_reading(batch_sizes: list[int], minutes: float) -> dict[int, float]:
    """The simulator's fleet (100 machines x 5 sensors at 1 Hz, seed 1) cut into compact
    batches in arrival order, as the gateway's uploader cuts them: bytes per reading."""
    from iiot.catalog import load_catalog
    from iiot.contract import ReadingColumns
    from iiot.wire import encode_batch
    from local_platform.simulator import FleetConfig, FleetSimulator

    start = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    config = FleetConfig(
        factories=1,
        machines_per_factory=100,
        hours=minutes / 60,
        interval_ms=1000,
        seed=1,
        start=start,
    )
    columns = ReadingColumns.concat(list(FleetSimulator(config, load_catalog()).chunks()))
    figures = {}
    for size in batch_sizes:
        whole = len(columns) // size * size
        total = sum(
            len(encode_batch(columns.take(slice(i, i + size)))) for i in range(0, whole, size)
        )
        figures[size] = round(total / whole, 2)
    return figures


def test_wire_size_per_reading_is_what_the_encoder_produces() -> None:
    measured = wire_bytes_per_reading(sorted(WIRE_BYTES_PER_READING), minutes=4)
    print(json.dumps({"wire_bytes_per_reading": measured}))
    for size, configured in WIRE_BYTES_PER_READING.items():
        assert measured[size] == pytest.approx(configured, rel=0.15), size


@pytest.mark.parametrize("name", ["dev", "staging", "prod"])
def test_each_environment_is_sized_from_its_workload(name: str) -> None:
    env = environments()[name]
    load = env.workload
    sizing = env.stream_sizing()
    peak = load.readings_per_second * load.headroom
    records = peak / load.readings_per_batch
    assert sizing.shards == max(
        1,
        math.ceil(records / SHARD_RECORDS_PER_SECOND),
        math.ceil(peak * load.bytes_per_reading / SHARD_BYTES_PER_SECOND),
        math.ceil(2 * peak * load.bytes_per_reading / SHARD_READ_BYTES_PER_SECOND),
        # the format decodes in the source: one subtask per shard
        math.ceil(peak / DECODE_EVENTS_PER_SOURCE_SUBTASK),
    )
    assert env.kinesis_shards() == sizing.shards
    assert (
        env.flink_parallelism
        == sizing.parallelism
        == max(sizing.shards, math.ceil(peak / DECODE_RULES_EVENTS_PER_SLOT))
    )
    assert sizing.kpus == env.flink_parallelism + 1


def test_prod_takes_a_million_readings_a_second_in_at_most_ten_shards() -> None:
    prod = environments()["prod"]
    assert prod.workload.readings_per_second == 1_000_000
    sizing = prod.stream_sizing()
    # 2000-reading batches at 2.71 B: 3.39 MB/s in with headroom, more than the records need;
    # decoding 1.25M readings/s in the source at 143K/s per subtask needs more shards still.
    assert sizing.shards_by_bytes_in > sizing.shards_by_records
    assert sizing.shards_by_decode > sizing.shards_by_bytes_in
    assert sizing.shards == 9 <= 10
    assert (sizing.parallelism, sizing.kpus) == (12, 13)  # 1.25M readings/s over 113K a slot
