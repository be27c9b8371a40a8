"""The warehouse's reliability KPI views (stacks/warehouse_stack.py `kpi_views`): created by the
stack after the external schema, by the same waited-for handlers, over a table the lake stack
declares with the columns the views read. (Their arithmetic runs on Sail over the lake job's
gold table in tests/spark/test_maintenance.py.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from stacks.constructs import redshift_sql_handler as handler
from stacks.lake_stack import TABLES
from stacks.warehouse_stack import EXTERNAL_SCHEMA, KPI_SCHEMA, MACHINE_DAY_KPIS, kpi_views
from tests.infra.conftest import Synth


def _of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


def test_the_views_run_once_the_external_schema_exists(synth: Synth) -> None:
    warehouse = synth.template("dev", "warehouse")
    (batch,) = _of_type(warehouse, "Custom::RedshiftBatch").values()
    assert batch["Properties"]["Sqls"] == kpi_views()
    (schema_id,) = _of_type(warehouse, "Custom::RedshiftStatement")
    assert schema_id in batch["DependsOn"]
    # The same provider (one waiter state machine) runs both.
    (statement,) = _of_type(warehouse, "Custom::RedshiftStatement").values()
    assert batch["Properties"]["ServiceToken"] == statement["Properties"]["ServiceToken"]
    assert len(_of_type(warehouse, "AWS::StepFunctions::StateMachine")) == 1
    policies = _of_type(warehouse, "AWS::IAM::Policy").values()
    batch_grants = [
        s
        for p in policies
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if "redshift-data:BatchExecuteStatement" in s["Action"]
    ]
    assert [s["Resource"] for s in batch_grants] == [
        {"Fn::GetAtt": [next(iter(_of_type(warehouse, "AWS::RedshiftServerless::Workgroup"))),
                        "Workgroup.WorkgroupArn"]}
    ]  # fmt: skip


def test_the_views_read_only_columns_of_the_gold_table_the_lake_declares() -> None:
    (table,) = [t for t in TABLES if t.name == MACHINE_DAY_KPIS]
    columns = {c.name for c in (*table.columns, *table.partition_keys)}
    views = [s for s in kpi_views() if s.startswith("CREATE OR REPLACE VIEW")]
    assert {re.search(r"VIEW (\S+) AS", v)[1] for v in views} == {  # type: ignore[index]
        f"{KPI_SCHEMA}.machine_day",
        f"{KPI_SCHEMA}.factory_day",
    }
    for view in views:
        assert re.findall(r"\bFROM\s+([\w.]+)", view) == [f"{EXTERNAL_SCHEMA}.{MACHINE_DAY_KPIS}"]
        assert view.endswith("WITH NO SCHEMA BINDING")  # a view over an external table must be
        query = view.split(" AS ", 1)[1].split(" FROM ")[0].removeprefix("SELECT ")
        # every column the view reads: names outside SQL keywords, functions and its aliases
        aliases = set(re.findall(r"\bAS (\w+)", query))
        read = set(re.findall(r"\b([a-z_]+)\b", query)) - aliases - {"nullif"}
        assert read <= columns, read - columns
        grouped = re.findall(r"GROUP BY (.+) WITH", view)
        for group in grouped:
            assert {c.strip() for c in group.split(",")} <= columns


def test_the_dashboards_reader_may_use_the_views_and_the_lake() -> None:
    grants = [s for s in kpi_views() if s.startswith("GRANT")]
    assert f"GRANT USAGE ON SCHEMA {KPI_SCHEMA} TO PUBLIC" in grants
    assert f"GRANT USAGE ON SCHEMA {EXTERNAL_SCHEMA} TO PUBLIC" in grants
    assert f"GRANT SELECT ON ALL TABLES IN SCHEMA {KPI_SCHEMA} TO PUBLIC" in grants
    assert kpi_views()[0] == f"CREATE SCHEMA IF NOT EXISTS {KPI_SCHEMA}"


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


def test_a_batch_is_submitted_as_one_transaction_and_waited_for(
    client: tuple[Any, Stubber],
) -> None:
    redshift_data, stubber = client
    target = {
        "WorkgroupName": "iiot-dev-warehouse",
        "Database": "iiot",
        "SecretArn": "arn:aws:secretsmanager:eu-west-1:000000000000:secret:admin-AbCdEf",
    }
    stubber.add_response(
        "batch_execute_statement", {"Id": "batch-1"}, {**target, "Sqls": kpi_views()}
    )
    stubber.add_response(
        "describe_statement",
        {"Id": "batch-1", "Status": "FAILED", "Error": "ERROR: schema lake does not exist"},
        {"Id": "batch-1"},
    )
    event = {
        "RequestType": "Create",
        "LogicalResourceId": "KpiViews",
        "ResourceProperties": {**target, "Sqls": kpi_views()},
    }
    submitted = handler.on_event(event, client=redshift_data)
    assert submitted == {"PhysicalResourceId": "KpiViews", "Data": {"StatementId": "batch-1"}}
    with pytest.raises(RuntimeError, match="batch-1 FAILED: ERROR: schema lake does not exist"):
        handler.is_complete({**event, "Data": submitted["Data"]}, client=redshift_data)
