"""Custom-resource handler that provisions an Amazon Managed Grafana workspace through its
Grafana HTTP API: a service account, the data sources and the dashboards.

Three resource types, one handler:

* `Custom::GrafanaServiceAccount`: the workspace's service account the deployment signs in
  as (Grafana role ADMIN: only an organization admin may add data sources), created and
  deleted with the Managed Grafana API (`CreateWorkspaceServiceAccount`).
* `Custom::GrafanaDataSource`: `POST /api/datasources`, or `PUT /api/datasources/uid/<uid>`
  when Grafana answers 409 (it exists); a `TokenSecretArn` property names the secret whose
  `token` goes into `secureJsonData.token` (read here, at deploy time, never in the template).
* `Custom::GrafanaDashboard`: `POST /api/dashboards/db` with `overwrite`, so an update of the
  generated JSON (`iiot dashboards`) replaces the workspace's copy.

Each request signs in with its own service-account token that lives `TOKEN_SECONDS` and is
deleted as soon as the request is done: no long-lived Grafana credential exists anywhere.
Deleting a data source or dashboard deletes it from the workspace (gone already is fine).

Runs outside the VPC (the workspace's endpoint is public, its sign-in IAM-guarded);
standard library and the runtime's boto3 only.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TOKEN_SECONDS = 900  # long enough for one request, short enough to be worthless if leaked
SERVICE_ACCOUNT = "Custom::GrafanaServiceAccount"
DATA_SOURCE = "Custom::GrafanaDataSource"
DASHBOARD = "Custom::GrafanaDashboard"


class GrafanaApi:
    """The Grafana HTTP API of one workspace, as one service-account token."""

    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(  # noqa: S310 (the workspace's https endpoint)
            f"{self.url}{path}", data=data, method=method, headers=headers
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
            return json.loads(response.read().decode() or "null")

    def put_data_source(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Add the data source, or update the one with its uid; Grafana's answer."""
        try:
            return dict(self.call("POST", "/api/datasources", spec))
        except urllib.error.HTTPError as error:
            if error.code != 409:
                raise
        uid = urllib.parse.quote(spec["uid"])
        return dict(self.call("PUT", f"/api/datasources/uid/{uid}", spec))

    def put_dashboard(self, dashboard: dict[str, Any], message: str) -> dict[str, Any]:
        body = {"dashboard": {**dashboard, "id": None}, "overwrite": True, "message": message}
        return dict(self.call("POST", "/api/dashboards/db", body))

    def delete(self, path: str) -> bool:
        """DELETE `path`; False when it was gone already."""
        try:
            self.call("DELETE", path)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return False
            raise
        return True


@contextmanager
def signed_in(grafana: Any, props: dict[str, Any]) -> Iterator[GrafanaApi]:
    """The workspace's API with a fresh short-lived token of the service account."""
    workspace, account = props["WorkspaceId"], props["ServiceAccountId"]
    created = grafana.create_workspace_service_account_token(
        workspaceId=workspace,
        serviceAccountId=account,
        name=f"deploy-{uuid.uuid4().hex[:12]}",
        secondsToLive=TOKEN_SECONDS,
    )["serviceAccountToken"]
    try:
        yield GrafanaApi(props["Url"], created["key"])
    finally:
        grafana.delete_workspace_service_account_token(
            workspaceId=workspace, serviceAccountId=account, tokenId=created["id"]
        )


def _clients() -> tuple[Any, Any]:
    import boto3

    return boto3.client("grafana"), boto3.client("secretsmanager")


def on_event(
    event: dict[str, Any], _context: object = None, grafana: Any = None, secrets: Any = None
) -> dict[str, Any]:
    if grafana is None or secrets is None:
        grafana, secrets = _clients()
    kind, request = event["ResourceType"], event["RequestType"]
    props = event["ResourceProperties"]
    if kind == SERVICE_ACCOUNT:
        if request == "Delete":
            grafana.delete_workspace_service_account(
                workspaceId=props["WorkspaceId"], serviceAccountId=event["PhysicalResourceId"]
            )
            return {"PhysicalResourceId": event["PhysicalResourceId"]}
        if request == "Update":  # the name and role never change: keep the account
            return {"PhysicalResourceId": event["PhysicalResourceId"]}
        account = grafana.create_workspace_service_account(
            workspaceId=props["WorkspaceId"], name=props["Name"], grafanaRole=props["Role"]
        )
        return {"PhysicalResourceId": account["id"], "Data": {"Id": account["id"]}}
    if kind == DATA_SOURCE:
        spec = json.loads(props["DataSource"])
        with signed_in(grafana, props) as api:
            if request == "Delete":
                api.delete(f"/api/datasources/uid/{urllib.parse.quote(spec['uid'])}")
            else:
                if "TokenSecretArn" in props:
                    stored = secrets.get_secret_value(SecretId=props["TokenSecretArn"])
                    token = json.loads(stored["SecretString"])["token"]
                    spec["secureJsonData"] = {**spec.get("secureJsonData", {}), "token": token}
                api.put_data_source(spec)
        return {"PhysicalResourceId": spec["uid"]}
    if kind == DASHBOARD:
        dashboard = json.loads(props["Dashboard"])
        with signed_in(grafana, props) as api:
            if request == "Delete":
                api.delete(f"/api/dashboards/uid/{urllib.parse.quote(dashboard['uid'])}")
                return {"PhysicalResourceId": dashboard["uid"]}
            saved = api.put_dashboard(dashboard, message=f"deployed: {props['Source']}")
        return {
            "PhysicalResourceId": dashboard["uid"],
            "Data": {"Url": saved.get("url", ""), "Version": str(saved.get("version", ""))},
        }
    raise ValueError(
        f"unknown resource type {kind!r}: this handler provisions {SERVICE_ACCOUNT}, "
        f"{DATA_SOURCE} and {DASHBOARD}"
    )
