"""Custom-resource handler that sets the retention of a Timestream for InfluxDB bucket.

Timestream for InfluxDB creates the instance's first bucket without a retention period (it
keeps everything), and neither CloudFormation nor the Timestream API can set one: only the
InfluxDB v2 API can. On create and update this handler signs in with the admin credentials of
the instance's secret (`POST /api/v2/signin`, basic auth, a session cookie), finds the bucket
(`GET /api/v2/buckets?name=...&org=...`) and sets its retention
(`PATCH /api/v2/buckets/<id>`, one `expire` rule). Deleting the resource leaves the bucket as
it is (the instance may be retained with its data).

Deployed as inline Lambda code in the VPC (standard library and the runtime's boto3 only), so
keep it small and self-contained.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request
from typing import Any


def _secret(secret_arn: str) -> dict[str, Any]:
    import boto3

    value = boto3.client("secretsmanager").get_secret_value(SecretId=secret_arn)
    return json.loads(value["SecretString"])


def _request(
    url: str, *, method: str, headers: dict[str, str], body: Any = None, timeout: float = 20.0
) -> tuple[dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers = {**headers, "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (https URL)
        text = response.read().decode() or "null"
        return dict(response.headers), json.loads(text)


def set_retention(
    url: str, credentials: dict[str, Any], *, bucket: str, org: str, seconds: int
) -> str:
    """Set `bucket`'s retention to `seconds`; returns the bucket's id."""
    basic = base64.b64encode(f"{credentials['username']}:{credentials['password']}".encode())
    headers, _ = _request(
        f"{url}/api/v2/signin", method="POST", headers={"Authorization": f"Basic {basic.decode()}"}
    )
    cookie = headers.get("Set-Cookie", headers.get("set-cookie", "")).split(";", 1)[0]
    session = {"Cookie": cookie}
    try:
        query = urllib.parse.urlencode({"name": bucket, "org": org})
        _, found = _request(f"{url}/api/v2/buckets?{query}", method="GET", headers=session)
        buckets = (found or {}).get("buckets", [])
        if len(buckets) != 1:
            raise RuntimeError(f"InfluxDB has {len(buckets)} buckets named {bucket!r} in {org!r}")
        bucket_id = buckets[0]["id"]
        _request(
            f"{url}/api/v2/buckets/{bucket_id}",
            method="PATCH",
            headers=session,
            body={"retentionRules": [{"type": "expire", "everySeconds": seconds}]},
        )
        return bucket_id
    finally:
        _request(f"{url}/api/v2/signout", method="POST", headers=session)


def on_event(event: dict[str, Any], _context: object = None) -> dict[str, Any]:
    props = event["ResourceProperties"]
    physical_id = f"{props['Url']}/{props['Org']}/{props['Bucket']}"
    if event["RequestType"] == "Delete":
        return {"PhysicalResourceId": event.get("PhysicalResourceId", physical_id)}
    bucket_id = set_retention(
        props["Url"],
        _secret(props["SecretArn"]),
        bucket=props["Bucket"],
        org=props["Org"],
        seconds=int(props["RetentionSeconds"]),
    )
    return {"PhysicalResourceId": physical_id, "Data": {"BucketId": bucket_id}}
