"""No Flink source subtask reads two shards of the telemetry stream.

The readings' watermark is assigned after the Kinesis source, one per source subtask, from the
newest event time of every shard that subtask reads (the connector takes no watermark into the
source: kda_sql/README.md, "Watermarks across shards and idle subtasks"). A subtask that reads
two shards drops the readings of the one that falls behind the other by more than the 5 s
delay; a lagging shard in a subtask of its own only holds the rules' watermark back.

The connector's default shard assigner (`UniformShardAssigner`, flink-connector-aws v5.0.0)
places a shard on subtask `mid * subtasks // 2**128`, `mid` the middle of the shard's hash-key
range, over the registered subtasks in order. A stream created with N shards splits the hash-key
space evenly. So each environment's sizing (config/environments.py: shards, parallelism) must
give every shard a subtask of its own.
"""

from __future__ import annotations

import pytest

from config.environments import environments

HASH_KEYS = 2**128


def _subtasks_of_shards(shards: int, subtasks: int) -> list[int]:
    """The subtask `UniformShardAssigner` gives each of `shards` evenly split shards."""
    ranges = [(i * HASH_KEYS // shards, (i + 1) * HASH_KEYS // shards - 1) for i in range(shards)]
    return [(start + end) // 2 * subtasks // HASH_KEYS for start, end in ranges]


def test_the_assigner_model_puts_two_shards_on_one_subtask_when_subtasks_are_fewer():
    assert _subtasks_of_shards(4, 4) == [0, 1, 2, 3]
    assert _subtasks_of_shards(9, 12) == [0, 1, 3, 4, 5, 7, 8, 9, 11]  # prod: 3 without a shard
    assert len(set(_subtasks_of_shards(9, 8))) < 9


@pytest.mark.parametrize("name", sorted(environments()))
def test_every_shard_has_a_source_subtask_of_its_own(name: str) -> None:
    env = environments()[name]
    shards = env.kinesis_shards()
    assert shards is not None, f"{name}: an on-demand stream reshards on its own"
    subtasks = _subtasks_of_shards(shards, env.flink_parallelism)
    assert len(set(subtasks)) == shards, (
        f"{name}: {shards} shards on {env.flink_parallelism} subtasks share subtasks {subtasks}"
    )
