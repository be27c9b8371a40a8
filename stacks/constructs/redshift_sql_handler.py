"""Custom-resource handlers that run one SQL statement (`Sql`), or several in one transaction
(`Sqls`), on Redshift Serverless and wait for it.

The Redshift Data API is asynchronous: ExecuteStatement returns an id at once, and a statement
that fails later (a missing role association, a typo) would leave the deployment green and the
object missing. `on_event` submits the statement; `is_complete`, called by CDK's provider
framework until it says so or the framework's timeout passes, fails the deployment with the
statement's own error. Deleting the resource leaves the object in place (it may hold grants).

Deployed as inline Lambda code (standard library and the runtime's boto3 only), so keep it
small and self-contained.
"""

from __future__ import annotations

from typing import Any

FAILED = ("FAILED", "ABORTED")


def _client() -> Any:
    import boto3

    return boto3.client("redshift-data")


def on_event(event: dict[str, Any], _context: object = None, client: Any = None) -> dict[str, Any]:
    physical_id = event.get("PhysicalResourceId") or event["LogicalResourceId"]
    if event["RequestType"] == "Delete":
        return {"PhysicalResourceId": physical_id}
    props = event["ResourceProperties"]
    target = {k: props[k] for k in ("WorkgroupName", "Database", "SecretArn")}
    if "Sqls" in props:  # several statements, one transaction
        response = (client or _client()).batch_execute_statement(Sqls=props["Sqls"], **target)
    else:
        response = (client or _client()).execute_statement(Sql=props["Sql"], **target)
    return {"PhysicalResourceId": physical_id, "Data": {"StatementId": response["Id"]}}


def is_complete(
    event: dict[str, Any], _context: object = None, client: Any = None
) -> dict[str, Any]:
    statement_id = event.get("Data", {}).get("StatementId")
    if event["RequestType"] == "Delete" or not statement_id:
        return {"IsComplete": True}
    statement = (client or _client()).describe_statement(Id=statement_id)
    status = statement["Status"]
    if status in FAILED:
        raise RuntimeError(
            f"Redshift statement {statement_id} {status}: {statement.get('Error', 'no error')}"
        )
    return {"IsComplete": status == "FINISHED"}
