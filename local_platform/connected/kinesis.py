"""Reading a Kinesis stream (moto in server mode) the way its AWS consumers do.

`ShardReader` keeps one iterator per shard, from TRIM_HORIZON, and can rewind a shard to a
sequence number (a Lambda event source retries a batch from the record that failed). Every
process of the run reaches moto through `AWS_ENDPOINT_URL`, which boto3 honours for every
client, so the real handlers' `boto3.client(...)` calls need no change.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

REGION = "eu-west-1"
ACCOUNT = "123456789012"


def aws_environment(moto_port: int) -> dict[str, str]:
    """What every process of the run needs to reach the local AWS APIs (fake credentials)."""
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "IIoT/local",
    }


def client(service: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        region_name=os.environ.get("AWS_DEFAULT_REGION", REGION),
        config=Config(retries={"max_attempts": 10, "mode": "standard"}),
    )


@dataclass
class Shard:
    shard_id: str
    iterator: str | None = None
    checkpoint: str | None = None  # the last sequence number done
    restart_at: str | None = None  # read again from this sequence number (a retry)
    behind_ms: int = 0


@dataclass
class ShardReader:
    """Every shard of `stream`, read in order from the oldest record.

    `read` moves the reading position; `checkpoint` records what is done; `rewind` reads again
    from a record (a failed batch's first failed record) or from after the checkpoint."""

    stream: str
    kinesis: Any
    shards: dict[str, Shard] = field(default_factory=dict)

    def refresh(self) -> None:
        listed = self.kinesis.list_shards(StreamName=self.stream)["Shards"]
        for entry in listed:
            shard_id = entry["ShardId"]
            if shard_id not in self.shards:
                self.shards[shard_id] = Shard(shard_id)

    def _iterator(self, shard: Shard) -> str:
        if shard.iterator is None:
            request: dict[str, Any] = {"StreamName": self.stream, "ShardId": shard.shard_id}
            if shard.restart_at is not None:
                request |= {
                    "ShardIteratorType": "AT_SEQUENCE_NUMBER",
                    "StartingSequenceNumber": shard.restart_at,
                }
            elif shard.checkpoint is not None:
                request |= {
                    "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                    "StartingSequenceNumber": shard.checkpoint,
                }
            else:
                request["ShardIteratorType"] = "TRIM_HORIZON"
            shard.iterator = self.kinesis.get_shard_iterator(**request)["ShardIterator"]
            shard.restart_at = None
        return shard.iterator

    def read(self, shard: Shard, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` records after the reading position, which moves past them."""
        answer = self.kinesis.get_records(ShardIterator=self._iterator(shard), Limit=limit)
        records: list[dict[str, Any]] = answer.get("Records", [])
        shard.behind_ms = int(answer.get("MillisBehindLatest", 0) or 0)
        shard.iterator = answer.get("NextShardIterator")
        return records

    def checkpoint(self, shard: Shard, sequence: str) -> None:
        shard.checkpoint = sequence

    def rewind(self, shard: Shard, at: str | None = None) -> None:
        """Read again from record `at`, or from after the checkpoint."""
        shard.restart_at = at
        shard.iterator = None

    @property
    def behind_ms(self) -> int:
        return max((s.behind_ms for s in self.shards.values()), default=0)


def wait_for_stream(kinesis: Any, stream: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
        if status["StreamStatus"] == "ACTIVE":
            return
        time.sleep(0.1)
    raise TimeoutError(f"Kinesis stream {stream} not ACTIVE after {timeout_s} s")
