"""Adapters for the InfluxDB writer. Production: Timestream for InfluxDB through the v2 API
(`influxdb-client`). Tests and local runs: the v1 `/write` API (Debian's InfluxDB 1.6), which
takes the same line protocol. Dead letters: SQS. Clients are passed in or built by the handler's
factory, never at import time."""

from __future__ import annotations

import atexit
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from lambdas.influx_writer.line_protocol import PRECISION
from lambdas.influx_writer.models import WriteError
from lambdas.shared.dead_letter import RecordingDeadLetter as RecordingDeadLetter  # tests, bench


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
