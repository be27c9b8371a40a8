"""The maintenance system's completed jobs reach the alert router's machine state the way the
cloud's maintenance rule writes them (`ingress.machine_state_item`, `stacks/alerting_stack.py`),
and the router reads them back from the table the connected run creates."""

from __future__ import annotations

import json

import boto3
from moto import mock_aws

from lambdas.alert_router.models import ReturnToService
from lambdas.alert_router.repository import DynamoMachineState
from local_platform.connected import aws, maintenance
from local_platform.connected.ingress import (
    MACHINE_STATE_RETENTION_S,
    MAINTENANCE_FIELDS,
    MAINTENANCE_FILTER,
    machine_state_item,
)
from stacks import alerting_stack

JOB = {
    "maintenance_id": "CM-F01-M003-4",
    "factory_id": "F01",
    "machine_id": "F01-M003",
    "kind": "corrective",
    "started_at_ms": 1_767_844_000_000,
    "completed_at_ms": 1_767_853_000_123,
    "failure_id": "F-F01-M003-1",
    "averted_failure": False,
}


def test_a_completed_job_becomes_the_item_the_maintenance_rule_writes():
    topic = maintenance.topic("F01")
    assert topic == "factory/F01/maintenance"
    item = machine_state_item(topic, maintenance.gateway_message(JOB))
    assert item == {
        "factory_id": {"S": "F01"},
        "machine_id": {"S": "F01-M003"},
        "completed_at_ms": {"N": "1767853000123"},
        "started_at_ms": {"N": "1767844000000"},
        "maintenance_id": {"S": "CM-F01-M003-4"},
        "kind": {"S": "corrective"},
        "expires_at": {"N": str(1_767_853_000 + 30 * 86_400)},
    }


def test_only_the_topics_own_factory_passes_the_rules_where_clause():
    message = maintenance.gateway_message(JOB)
    assert machine_state_item("factory/F02/maintenance", message) is None
    assert machine_state_item("factory/F01/maintenance", b"not json") is None
    assert machine_state_item("factory/F01/maintenance", b"[1, 2]") is None


def test_the_local_rule_is_the_stacks_rule():
    """The same fields, TTL and topic as the deployed rule's SQL (local topics carry no
    environment prefix)."""
    assert MAINTENANCE_FIELDS == alerting_stack.MACHINE_STATE_FIELDS
    assert MACHINE_STATE_RETENTION_S == alerting_stack.MACHINE_STATE_RETENTION_S
    deployed = alerting_stack.MAINTENANCE_TOPIC.replace("factory/", "factory/+/")
    assert deployed == MAINTENANCE_FILTER


def test_the_router_reads_what_the_rule_wrote_in_the_runs_table(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        dynamodb = boto3.client("dynamodb")
        table = aws.create_machine_state_table(dynamodb, "iiot-local-machine-state")
        earlier = JOB | {"maintenance_id": "PM-F01-M003-1", "kind": "preventive"}
        earlier |= {"completed_at_ms": JOB["completed_at_ms"] - 86_400_000}
        for job in (earlier, JOB):
            item = machine_state_item(maintenance.topic("F01"), maintenance.gateway_message(job))
            dynamodb.put_item(TableName=table, Item=item)
        state = DynamoMachineState(dynamodb, table)
        found = state.last_return_to_service("F01", "F01-M003", JOB["completed_at_ms"] + 20_000)
        assert found == ReturnToService(
            "F01", "F01-M003", JOB["completed_at_ms"], "CM-F01-M003-4", "corrective"
        )
        before = state.last_return_to_service("F01", "F01-M003", JOB["completed_at_ms"] - 1)
        assert before is not None
        assert before.maintenance_id == "PM-F01-M003-1"


def test_the_gateways_message_keeps_what_the_predictor_reads():
    message = json.loads(maintenance.gateway_message(JOB))
    assert message["machine_id"] == "F01-M003"
    assert message["completed_at_ms"] == JOB["completed_at_ms"]
