"""Adapters for the InfluxDB writer. Production: Timestream for InfluxDB through the v2 API
(`influxdb-client`). Tests and local runs: the v1 `/write` API (Debian's InfluxDB 1.6), which
takes the same line protocol. Dead letters: SQS. Clients are passed in or built by the handler's
factory, never at import time."""

from __future__ import annotations

import atexit
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import msgspec

from iiot.contract import Reading, ReadingColumns
from lambdas.influx_writer.line_protocol import PRECISION
from lambdas.influx_writer.models import WriteError, WriteFailedError
from lambdas.shared.dead_letter import RecordingDeadLetter as RecordingDeadLetter  # tests, bench

_encode_reading: Callable[[Reading], bytes] = msgspec.json.Encoder().encode


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class InfluxV2Writer:
    """Writes through `influxdb-client`'s synchronous write API (InfluxDB 2.x / Timestream for
    InfluxDB). Retries are the service's job, so the client's own are switched off."""

    def __init__(self, client: Any, *, bucket: str, org: str) -> None:
        from influxdb_client.client.write_api import SYNCHRONOUS

        self._client = client
        self._write_api: Any = client.write_api(write_options=SYNCHRONOUS)
        self._bucket = bucket
        self._org = org

    @classmethod
    def connect(cls, url: str, credentials: dict[str, str], *, bucket: str, org: str,
                timeout_ms: int = 10_000) -> InfluxV2Writer:  # fmt: skip
        """A writer from the secret's `token`, or its `username` and `password`."""
        from influxdb_client.client.influxdb_client import InfluxDBClient

        if credentials.get("token"):
            client = InfluxDBClient(
                url=url, token=credentials["token"], org=org, timeout=timeout_ms, retries=False
            )
        elif credentials.get("username") and credentials.get("password"):
            client = InfluxDBClient(
                url=url,
                username=credentials["username"],
                password=credentials["password"],
                org=org,
                timeout=timeout_ms,
                retries=False,
            )
        else:
            raise ValueError(
                "the InfluxDB secret needs `token`, or `username` and `password` "
                f"(found keys: {sorted(credentials)})"
            )
        writer = cls(client, bucket=bucket, org=org)
        # Close before interpreter shutdown: the client's finaliser fails once modules are gone.
        atexit.register(writer.close)
        return writer

    def close(self) -> None:
        self._write_api = None
        self._client.close()

    def write(self, lines: list[str]) -> None:
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self._write_api.write(
                bucket=self._bucket, org=self._org, record="\n".join(lines),
                write_precision=PRECISION,
            )  # fmt: skip
        except ApiException as exc:
            raise WriteError(
                f"{exc.reason}: {str(exc.body or '')[:500]}",
                status=exc.status,
                retry_after_s=_retry_after(exc.headers),
            ) from exc
        except HTTPError as exc:
            raise WriteError(f"no answer from InfluxDB: {exc}", status=None) from exc


class InfluxV1Writer:
    """Writes to the v1 `/write` endpoint (InfluxDB 1.x), standard library only."""

    def __init__(self, base_url: str, database: str, *, timeout_s: float = 10.0) -> None:
        query = urllib.parse.urlencode({"db": database, "precision": PRECISION})
        self._url = f"{base_url.rstrip('/')}/write?{query}"
        self._timeout_s = timeout_s

    def write(self, lines: list[str]) -> None:
        request = urllib.request.Request(  # noqa: S310 (the URL is our configuration)
            self._url, data="\n".join(lines).encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
                response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:500]
            raise WriteError(
                f"{exc.reason}: {body}", status=exc.code, retry_after_s=_retry_after(exc.headers)
            ) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise WriteError(f"no answer from InfluxDB: {exc}", status=None) from exc


class KinesisReadingsForwarder:
    """Puts each reading as one JSON row (the reading contract's JSON) on a Kinesis stream,
    partitioned by machine so one machine's readings stay in order on one shard."""

    MAX_RECORDS_PER_CALL = 500  # PutRecords limit
    MAX_ATTEMPTS = 4

    def __init__(
        self, client: Any, stream_name: str, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._client = client
        self._stream_name = stream_name
        self._sleep = sleep

    def forward(self, columns: ReadingColumns) -> int:
        # one call's worth of rows at a time: a large batch never holds all its rows at once
        for start in range(0, len(columns), self.MAX_RECORDS_PER_CALL):
            part = columns.take(slice(start, start + self.MAX_RECORDS_PER_CALL))
            self._put(
                [
                    {"Data": _encode_reading(r), "PartitionKey": r.machine_id}
                    for r in part.to_readings()
                ]
            )
        return len(columns)

    def _put(self, entries: list[dict[str, Any]]) -> None:
        for attempt in range(1, self.MAX_ATTEMPTS + 1):
            answer = self._client.put_records(StreamName=self._stream_name, Records=entries)
            if not answer.get("FailedRecordCount"):
                return
            # keep only the entries Kinesis refused (throttled), in their order
            entries = [
                entry
                for entry, result in zip(entries, answer["Records"], strict=True)
                if result.get("ErrorCode")
            ]
            if attempt < self.MAX_ATTEMPTS:
                self._sleep(0.1 * 2 ** (attempt - 1))
        raise WriteFailedError(
            f"{len(entries)} readings could not be forwarded to {self._stream_name} after "
            f"{self.MAX_ATTEMPTS} attempts (throttled?); the record will be retried"
        )
