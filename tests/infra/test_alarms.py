"""Every moving part of an environment and the alarm that watches it (issue 15).

The table below is the list: a part, the metric that says it is unwell, and whether silence
(no data) is itself a failure. The test resolves the monitoring stack's alarms against the
environment's other stacks (tests/infra/harness/model.py) and finds each part's alarm,
notifying the operations topic.
"""

from __future__ import annotations

from typing import Any

import pytest

from config.environments import environments
from tests.infra.conftest import Synth
from tests.infra.harness.model import Cloud


def cloud_of(synth: Synth, env: str) -> Cloud:
    return Cloud.from_paths(
        {f"iiot-{name}-{concern}": path for (name, concern), path in synth.template_paths.items()
         if name == env}
    )  # fmt: skip


def moving_parts(env: str, cloud: Cloud) -> list[tuple[str, str, str, dict[str, str], bool]]:
    """(part, namespace, metric, dimensions, missing data breaches)."""
    config = environments()[env]
    prefix = config.prefix
    (lake_run,) = [m for m in cloud.resources("AWS::StepFunctions::StateMachine")
                   if m.stack.endswith("-lake")]  # fmt: skip
    parts: list[tuple[str, str, str, dict[str, str], bool]] = [
        ("telemetry stream consumers", "AWS/Kinesis", "GetRecords.IteratorAgeMilliseconds",
         {"StreamName": f"{prefix}-telemetry"}, False),
        ("telemetry stream capacity", "AWS/Kinesis", "PutRecords.ThrottledRecords",
         {"StreamName": f"{prefix}-telemetry"}, False),
        ("Flink rules' enhanced fan-out consumer of the telemetry", "AWS/Kinesis",
         "SubscribeToShardEvent.MillisBehindLatest",
         {"StreamName": f"{prefix}-telemetry", "ConsumerName": f"{prefix}-stream-rules"}, False),
        ("poison batches the rules' decoder refused", "AWS/Kinesis", "IncomingRecords",
         {"StreamName": f"{prefix}-stream-dead-letters"}, False),
        ("anomaly stream (the router's input)", "AWS/Kinesis",
         "GetRecords.IteratorAgeMilliseconds", {"StreamName": f"{prefix}-anomalies"}, False),
        ("Firehose to bronze", "AWS/Firehose", "DeliveryToS3.Success", {}, False),
        ("Firehose freshness", "AWS/Firehose", "DeliveryToS3.DataFreshness", {}, False),
        ("alert router", "AWS/Lambda", "Errors", {}, False),
        ("alert router lag", "AWS/Lambda", "IteratorAge", {}, False),
        ("InfluxDB writer", "AWS/Lambda", "Errors", {}, False),
        ("InfluxDB writer lag", "AWS/Lambda", "IteratorAge", {}, False),
        ("Flink application running", "AWS/KinesisAnalytics", "downtime",
         {"Application": f"{prefix}-stream-rules"}, True),
        ("lake run", "AWS/States", "ExecutionsFailed",
         {"StateMachineArn": cloud.attributes(lake_run)["Arn"]}, False),
        ("lake run duration", "AWS/States", "ExecutionsTimedOut",
         {"StateMachineArn": cloud.attributes(lake_run)["Arn"]}, False),
        ("training pipeline", "AWS/Sagemaker/ModelBuildingPipeline", "ExecutionFailed",
         {"PipelineName": f"{prefix}-failure-model"}, False),
        ("gateway upload backlog", config.gateway_metrics_namespace, "BacklogReadings", {}, False),
        ("gateways sending another factory's data", config.gateway_metrics_namespace,
         "FactoryMismatch", {}, False),
    ]  # fmt: skip
    for factory in config.factories:
        parts.append(
            (f"gateways of {factory}", config.gateway_metrics_namespace,
             f"StatusReports-{factory}", {}, True)
        )  # fmt: skip
    return parts


def _dimensions(cloud: Cloud, alarm: Any) -> dict[str, str]:
    return {
        d["Name"]: str(d["Value"])
        for d in cloud.resolve(alarm.stack, alarm.properties.get("Dimensions", []))
    }


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_every_moving_part_has_its_alarm(synth: Synth, env: str) -> None:
    cloud = cloud_of(synth, env)
    alarms = cloud.resources("AWS::CloudWatch::Alarm")
    topic = next(t for t in cloud.resources("AWS::SNS::Topic") if t.stack.endswith("-monitoring"))
    missing = []
    for part, namespace, metric, dimensions, breaching in moving_parts(env, cloud):
        found = [
            alarm for alarm in alarms
            if alarm.properties.get("Namespace") == namespace
            and alarm.properties.get("MetricName") == metric
            and dimensions.items() <= _dimensions(cloud, alarm).items()
        ]  # fmt: skip
        if not found:
            missing.append(f"{part}: {namespace} {metric} {dimensions}")
            continue
        for alarm in found:
            actions = cloud.resolve(alarm.stack, alarm.properties["AlarmActions"])
            assert actions == [cloud.attributes(topic)["Ref"]], part
            treat = alarm.properties.get("TreatMissingData")
            assert (treat == "breaching") == breaching, (part, treat)
    assert not missing, "moving parts without an alarm:\n" + "\n".join(missing)
