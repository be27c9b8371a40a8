"""Custom-resource handler that issues Grafana's read-only token for Timestream for InfluxDB.

Grafana's InfluxDB data source (Flux) signs in with a token. It gets its own, allowed to read
the one telemetry bucket and nothing else, instead of the admin credentials the writer uses:
on create (and on an update, which CloudFormation follows with a delete of the old one) this
handler signs in with the admin credentials of the instance's secret (`POST /api/v2/signin`),
finds the bucket (`GET /api/v2/buckets?name=...&org=...`), creates an authorization with a
single `read` permission on it (`POST /api/v2/authorizations`) and writes the token into the
Grafana stack's own secret, which the provisioning handler reads. The token never appears in
a template, a property or a response. Delete revokes the authorization
(`DELETE /api/v2/authorizations/<id>`); an instance that is already gone has nothing to revoke.

Runs in the VPC (the instance is private): standard library and the runtime's boto3 only.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


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


@contextmanager
def session(url: str, credentials: dict[str, Any]) -> Iterator[dict[str, str]]:
    """The headers of an InfluxDB session signed in as the admin; signs out afterwards."""
    basic = base64.b64encode(f"{credentials['username']}:{credentials['password']}".encode())
    headers, _ = _request(
        f"{url}/api/v2/signin", method="POST", headers={"Authorization": f"Basic {basic.decode()}"}
    )
    cookie = headers.get("Set-Cookie", headers.get("set-cookie", "")).split(";", 1)[0]
    try:
        yield {"Cookie": cookie}
    finally:
        _request(f"{url}/api/v2/signout", method="POST", headers={"Cookie": cookie})


def issue_read_token(
    url: str, credentials: dict[str, Any], *, org: str, bucket: str, description: str
) -> dict[str, str]:
    """A new authorization that may only read `bucket`: {"id", "token"}."""
    with session(url, credentials) as headers:
        query = urllib.parse.urlencode({"name": bucket, "org": org})
        _, found = _request(f"{url}/api/v2/buckets?{query}", method="GET", headers=headers)
        buckets = (found or {}).get("buckets", [])
        if len(buckets) != 1:
            raise RuntimeError(f"InfluxDB has {len(buckets)} buckets named {bucket!r} in {org!r}")
        target = buckets[0]
        permission = {
            "action": "read",
            "resource": {"type": "buckets", "id": target["id"], "orgID": target["orgID"]},
        }
        _, created = _request(
            f"{url}/api/v2/authorizations",
            method="POST",
            headers=headers,
            body={
                "orgID": target["orgID"],
                "description": description,
                "permissions": [permission],
            },
        )
        return {"id": created["id"], "token": created["token"]}


def revoke(url: str, credentials: dict[str, Any], authorization_id: str) -> bool:
    """Delete the authorization; False when the instance or the authorization is gone."""
    try:
        with session(url, credentials) as headers:
            _request(
                f"{url}/api/v2/authorizations/{urllib.parse.quote(authorization_id)}",
                method="DELETE",
                headers=headers,
            )
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise
    except urllib.error.URLError:
        return False  # the instance is deleted (or unreachable) already: nothing to revoke
    return True


def _secrets() -> Any:
    import boto3

    return boto3.client("secretsmanager")


def on_event(event: dict[str, Any], _context: object = None, secrets: Any = None) -> dict[str, Any]:
    props = event["ResourceProperties"]
    secrets = secrets or _secrets()
    admin = json.loads(secrets.get_secret_value(SecretId=props["AdminSecretArn"])["SecretString"])
    if event["RequestType"] == "Delete":
        physical_id = event["PhysicalResourceId"]
        if physical_id.startswith("authorization-"):
            revoke(props["Url"], admin, physical_id.removeprefix("authorization-"))
        return {"PhysicalResourceId": physical_id}
    issued = issue_read_token(
        props["Url"],
        admin,
        org=props["Org"],
        bucket=props["Bucket"],
        description=props["Description"],
    )
    secrets.put_secret_value(
        SecretId=props["TokenSecretArn"],
        SecretString=json.dumps({"token": issued["token"], "authorizationId": issued["id"]}),
    )
    # A new id on every update: CloudFormation then deletes (revokes) the previous one.
    return {"PhysicalResourceId": f"authorization-{issued['id']}"}
