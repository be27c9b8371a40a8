"""Cost guardrails per environment (issue 15): the warehouse's ceiling, Flink's autoscaling
off in dev, single-AZ interface endpoints in dev, and a monthly budget alerting operations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from config.environments import environments
from tests.infra.conftest import Synth


def _of_type(synth: Synth, env: str, concern: str, kind: str) -> list[dict[str, Any]]:
    return [
        body for body in synth.template(env, concern)["Resources"].values() if body["Type"] == kind
    ]


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_guardrails_follow_the_environment(synth: Synth, env: str) -> None:
    config = environments()[env]
    (workgroup,) = _of_type(synth, env, "warehouse", "AWS::RedshiftServerless::Workgroup")
    assert workgroup["Properties"]["MaxCapacity"] == config.redshift_max_rpu
    (application,) = _of_type(synth, env, "streaming", "AWS::KinesisAnalyticsV2::Application")
    flink = application["Properties"]["ApplicationConfiguration"]["FlinkApplicationConfiguration"]
    autoscaling = flink["ParallelismConfiguration"]["AutoScalingEnabled"]
    assert autoscaling is config.flink_autoscaling
    endpoints = [
        e for e in _of_type(synth, env, "network", "AWS::EC2::VPCEndpoint")
        if e["Properties"].get("VpcEndpointType") == "Interface"
    ]  # fmt: skip
    assert endpoints
    for endpoint in endpoints:
        assert len(endpoint["Properties"]["SubnetIds"]) == (1 if config.single_az_endpoints else 3)


def test_dev_is_the_cheap_one() -> None:
    envs = environments()
    assert not envs["dev"].flink_autoscaling
    assert envs["dev"].single_az_endpoints
    assert envs["prod"].flink_autoscaling
    assert not envs["prod"].single_az_endpoints
    assert envs["dev"].monthly_budget_usd < envs["prod"].monthly_budget_usd


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_a_monthly_budget_alerts_the_operations_topic(synth: Synth, env: str) -> None:
    config = environments()[env]
    resources = synth.template(env, "monitoring")["Resources"]
    (budget,) = [b for b in resources.values() if b["Type"] == "AWS::Budgets::Budget"]
    data = budget["Properties"]["Budget"]
    assert data["BudgetLimit"] == {"Amount": config.monthly_budget_usd, "Unit": "USD"}
    assert data["TimeUnit"] == "MONTHLY"
    assert data["CostFilters"] == {"TagKeyValue": [f"user:environment${env}"]}
    (topic_id,) = [n for n, b in resources.items() if b["Type"] == "AWS::SNS::Topic"]
    notifications = budget["Properties"]["NotificationsWithSubscribers"]
    assert {n["Notification"]["NotificationType"] for n in notifications} == {
        "ACTUAL",
        "FORECASTED",
    }
    for notification in notifications:
        assert notification["Subscribers"] == [
            {"SubscriptionType": "SNS", "Address": {"Ref": topic_id}}
        ]
    # Budgets may publish to the topic and use its key.
    policies = json.dumps([b for b in resources.values() if b["Type"] in (
        "AWS::SNS::TopicPolicy", "AWS::KMS::Key")])  # fmt: skip
    assert policies.count("budgets.amazonaws.com") >= 2
