"""The handlers behind the warehouse's SQL custom resource, against botocore's Stubber (the
real Redshift Data API client, its request validation included, with scripted responses)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from stacks.constructs import redshift_sql_handler as handler

PROPS = {
    "WorkgroupName": "iiot-dev",
    "Database": "dev",
    "SecretArn": "arn:aws:secretsmanager:eu-west-1:000000000000:secret:admin-AbCdEf",
    "Sql": "CREATE EXTERNAL SCHEMA IF NOT EXISTS lake FROM DATA CATALOG DATABASE 'db'",
}


@pytest.fixture
def client() -> Iterator[tuple[Any, Stubber]]:
    redshift_data = boto3.client(
        "redshift-data",
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with Stubber(redshift_data) as stubber:
        yield redshift_data, stubber
        stubber.assert_no_pending_responses()


def event(kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "RequestType": kind,
        "LogicalResourceId": "ExternalSchema",
        "ResourceProperties": PROPS,
        **extra,
    }


def test_create_submits_the_statement_and_returns_its_id(client: tuple[Any, Stubber]) -> None:
    redshift_data, stubber = client
    stubber.add_response("execute_statement", {"Id": "stmt-1"}, PROPS)
    result = handler.on_event(event("Create"), client=redshift_data)
    assert result == {"PhysicalResourceId": "ExternalSchema", "Data": {"StatementId": "stmt-1"}}


def test_waits_until_the_statement_finishes(client: tuple[Any, Stubber]) -> None:
    redshift_data, stubber = client
    for status in ("SUBMITTED", "STARTED", "FINISHED"):
        stubber.add_response(
            "describe_statement", {"Id": "stmt-1", "Status": status}, {"Id": "stmt-1"}
        )
    polled = [
        handler.is_complete(event("Create", Data={"StatementId": "stmt-1"}), client=redshift_data)
        for _ in range(3)
    ]
    assert polled == [{"IsComplete": False}, {"IsComplete": False}, {"IsComplete": True}]


@pytest.mark.parametrize("status", handler.FAILED)
def test_a_failed_statement_fails_the_deployment_with_its_error(
    client: tuple[Any, Stubber], status: str
) -> None:
    redshift_data, stubber = client
    stubber.add_response(
        "describe_statement",
        {"Id": "stmt-1", "Status": status, "Error": "ERROR: IAM role is not associated"},
        {"Id": "stmt-1"},
    )
    with pytest.raises(RuntimeError, match=r"stmt-1 .*IAM role is not associated"):
        handler.is_complete(event("Update", Data={"StatementId": "stmt-1"}), client=redshift_data)


def test_delete_keeps_the_object_and_calls_nothing(client: tuple[Any, Stubber]) -> None:
    redshift_data, _ = client  # no responses queued: any call would fail
    deleted = event("Delete", PhysicalResourceId="ExternalSchema")
    assert handler.on_event(deleted, client=redshift_data) == {
        "PhysicalResourceId": "ExternalSchema"
    }
    assert handler.is_complete(deleted, client=redshift_data) == {"IsComplete": True}
