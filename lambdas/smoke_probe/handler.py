"""The smoke tests' InfluxDB probe Lambda (stacks/smoke_stack.py), in the environment's VPC.

Input: `{"machine_id": ..., "metric": ..., "bucket": ...}` (the test batch's machine, its
metric, the bucket). Output: `{"count": N}`, the readings InfluxDB holds, from the same count
query `iiot smoke` runs directly (influx.py), signed in with the InfluxDB writer's secret
(INFLUXDB_URL, INFLUXDB_SECRET_ARN). A refused input or query raises: the invoker sees a
function error with the message.
"""

from __future__ import annotations

import os
from typing import Any

from lambdas.smoke_probe.influx import InfluxQueryError, influx_count, influx_credentials

QUERY_TIMEOUT_S = 20.0
_secrets: Any = None


def _secrets_client() -> Any:
    global _secrets  # one client per warm container
    if _secrets is None:
        import boto3

        _secrets = boto3.client("secretsmanager")
    return _secrets


def handler(event: dict[str, Any], _context: Any) -> dict[str, int]:
    try:
        machine_id, metric, bucket = (str(event[key]) for key in ("machine_id", "metric", "bucket"))
    except (KeyError, TypeError) as error:
        raise InfluxQueryError(f"the input needs machine_id, metric and bucket: {error}") from error
    credentials = influx_credentials(_secrets_client(), os.environ["INFLUXDB_SECRET_ARN"])
    count = influx_count(
        os.environ["INFLUXDB_URL"], bucket, credentials, machine_id, metric, QUERY_TIMEOUT_S
    )
    return {"count": count}
