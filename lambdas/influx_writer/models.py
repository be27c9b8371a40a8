"""The InfluxDB writer's settings and outcomes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from iiot.wire import Limits

DEFAULT_BATCH_POINTS = 5000
DEFAULT_MAX_ATTEMPTS = 5

# What one Kinesis record may cost the writer. A record's data is at most 1 MiB (Kinesis), in
# practice at most 128 KiB (IoT Core's message limit, the gateways' batch_max_bytes) and about
# 20,000 readings (the gateways' batch_max_readings); 200,000 readings and 16 MiB decompressed
# leave a wide margin for a dense 1 MiB batch while bounding one record's decoding to tens of
# megabytes of the function's 512 MB (the bomb test runs it under an address-space limit).
WRITER_LIMITS = Limits(
    max_payload_bytes=1024 * 1024,
    max_items=10_000,
    max_depth=8,
    max_batch_readings=200_000,
    max_decompressed_bytes=16 * 1024 * 1024,
)


@dataclass(frozen=True)
class WriterSettings:
    """The function's configuration; every required variable fails fast when missing.

    The InfluxDB credentials live in Secrets Manager (`INFLUXDB_SECRET_ARN`): a JSON object with
    either `token` or `username` and `password` (what Timestream for InfluxDB creates).
    """

    influxdb_url: str
    influxdb_org: str
    influxdb_bucket: str
    influxdb_secret_arn: str
    idempotency_table: str
    dead_letter_queue_url: str
    batch_points: int = DEFAULT_BATCH_POINTS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> WriterSettings:
        return cls(
            influxdb_url=environ["INFLUXDB_URL"],
            influxdb_org=environ["INFLUXDB_ORG"],
            influxdb_bucket=environ["INFLUXDB_BUCKET"],
            influxdb_secret_arn=environ["INFLUXDB_SECRET_ARN"],
            idempotency_table=environ["IDEMPOTENCY_TABLE"],
            dead_letter_queue_url=environ["DEAD_LETTER_QUEUE_URL"],
            batch_points=int(environ.get("WRITE_BATCH_POINTS", DEFAULT_BATCH_POINTS)),
            max_attempts=int(environ.get("WRITE_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)),
        )


class WriteError(Exception):
    """A write the server refused or that did not reach it. `status` is the HTTP status (None
    when there was no answer); `retry_after_s` the server's Retry-After, if it sent one."""

    def __init__(self, message: str, *, status: int | None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        """Throttling, server errors and no answer are worth retrying; 4xx are not."""
        return self.status is None or self.status == 429 or self.status >= 500


class WriteFailedError(RuntimeError):
    """The record could not be written now (retries exhausted or a configuration problem):
    the batch reports it as failed so Lambda retries it, and nothing is lost."""


@dataclass
class RecordOutcome:
    """What happened to one Kinesis record."""

    format: str  # "batch" or "json"
    points: int = 0
    rejected_readings: int = 0
    dead_lettered: bool = False
    attempts: int = 0
    reasons: list[str] = field(default_factory=list)
    duplicate: bool = False  # the same record was handled before: nothing was done again
