"""What matters in each stack: encryption, access, lifecycle, sizing and wiring."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from config.environments import LayerLifecycle, environments
from iiot import topics
from tests.infra.conftest import Synth


def template(synth: Synth, env: str, concern: str) -> Template:
    return Template.from_json(synth.template(env, concern))


def resources(synth: Synth, env: str, concern: str, kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: body
        for name, body in synth.template(env, concern)["Resources"].items()
        if body["Type"] == kind
    }


def statements(synth: Synth, env: str, concern: str, role: str = "") -> list[dict[str, Any]]:
    """The policy statements of a stack, or of the roles whose logical id contains `role`."""
    found = []
    for body in resources(synth, env, concern, "AWS::IAM::Policy").values():
        if role in json.dumps(body["Properties"].get("Roles", [])):
            found += body["Properties"]["PolicyDocument"]["Statement"]
    return found


# --- network -------------------------------------------------------------------------------


def test_network_is_isolated_in_three_azs_with_flow_logs(synth: Synth) -> None:
    network = template(synth, "dev", "network")
    network.resource_count_is("AWS::EC2::NatGateway", 0)
    network.resource_count_is("AWS::EC2::InternetGateway", 0)
    network.resource_count_is("AWS::EC2::Subnet", 3)
    network.has_resource_properties("AWS::EC2::FlowLog", {"TrafficType": "REJECT"})
    endpoints = resources(synth, "dev", "network", "AWS::EC2::VPCEndpoint").values()
    services = json.dumps([e["Properties"]["ServiceName"] for e in endpoints])
    for service in ("secretsmanager", "sqs", "sts", "s3", "dynamodb"):
        assert f".{service}" in services, service
    for endpoint in endpoints:
        if endpoint["Properties"]["VpcEndpointType"] == "Interface":
            assert endpoint["Properties"]["PrivateDnsEnabled"] is True


# --- lake ----------------------------------------------------------------------------------


def test_every_lake_bucket_is_private_encrypted_tls_only_and_versioned(synth: Synth) -> None:
    lake = synth.template("dev", "lake")
    buckets = resources(synth, "dev", "lake", "AWS::S3::Bucket")
    assert len(buckets) == 3  # logs, lake (landing/bronze/silver/gold prefixes), artifacts
    for name, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }, name
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        algorithm = sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
        if name.startswith("Logs"):
            assert algorithm == "AES256"  # S3 access logs cannot go to an SSE-KMS bucket
        else:
            assert algorithm == "aws:kms"
            assert props["LoggingConfiguration"]["DestinationBucketName"]
    policies = resources(synth, "dev", "lake", "AWS::S3::BucketPolicy")
    assert len(policies) == 3
    for policy in policies.values():
        denies = [
            s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"
        ]
        conditions = json.dumps([s.get("Condition") for s in denies])
        assert '"aws:SecureTransport": "false"' in conditions
        assert '"s3:TlsVersion": 1.2' in conditions
    assert lake["Resources"]  # the template is not empty


def test_lake_key_rotates(synth: Synth) -> None:
    template(synth, "dev", "lake").has_resource_properties(
        "AWS::KMS::Key", {"EnableKeyRotation": True}
    )


def _lifecycle_rules(synth: Synth, env: str, bucket: str) -> dict[str, dict[str, Any]]:
    body = next(
        body
        for name, body in resources(synth, env, "lake", "AWS::S3::Bucket").items()
        if name.startswith(bucket)
    )
    return {
        rule.get("Prefix", ""): rule
        for rule in body["Properties"]["LifecycleConfiguration"]["Rules"]
    }


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_lifecycle_tiers_follow_the_environment_config(synth: Synth, env: str) -> None:
    settings = environments()[env].lake
    expected_by_prefix = {
        ("Lake", "landing/"): LayerLifecycle(expire_after_days=settings.landing_expire_after_days),
        ("Lake", "bronze/"): settings.bronze,
        ("Lake", "silver/"): settings.silver,
        ("Lake", "gold/"): settings.gold,
        ("Artifacts", ""): settings.artifacts,
        ("Logs", ""): settings.logs,
    }
    for (bucket, prefix), lifecycle in expected_by_prefix.items():
        rule = _lifecycle_rules(synth, env, bucket)[prefix]
        transitions = {
            t["StorageClass"]: t["TransitionInDays"] for t in rule.get("Transitions", [])
        }
        expected = {}
        if lifecycle.infrequent_access_after_days is not None:
            expected["STANDARD_IA"] = lifecycle.infrequent_access_after_days
        if lifecycle.glacier_after_days is not None:
            expected["GLACIER"] = lifecycle.glacier_after_days
        assert transitions == expected, (bucket, prefix)
        assert rule.get("ExpirationInDays") == lifecycle.expire_after_days, (bucket, prefix)
        assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}


def test_lake_layout_matches_the_spark_jobs(synth: Synth) -> None:
    from spark_jobs.io import LakePaths

    paths = LakePaths.from_root("s3://lake")
    prefixes = {
        paths.landing: "landing",
        paths.bronze: "bronze/",
        paths.silver: "silver/",
        paths.machine_daily: "gold/",
        paths.factory_daily: "gold/",
    }
    for uri, prefix in prefixes.items():  # the prefixes the lifecycle tiers apply to
        assert uri.startswith(f"s3://lake/{prefix}"), uri
    locations = json.dumps(
        [
            t["Properties"]["TableInput"]["Parameters"]["delta.location"]
            for t in resources(synth, "dev", "lake", "AWS::Glue::Table").values()
        ]
    )
    for table in (paths.silver, paths.machine_daily, paths.factory_daily):
        assert table.removeprefix("s3://lake") in locations, table


def test_prod_keeps_data_when_a_stack_is_deleted(synth: Synth) -> None:
    for env, policy in (("prod", "Retain"), ("dev", "Delete")):
        for bucket in resources(synth, env, "lake", "AWS::S3::Bucket").values():
            assert bucket["DeletionPolicy"] == policy, env


def test_glue_tables_read_delta_symlink_manifests(synth: Synth) -> None:
    tables = resources(synth, "dev", "lake", "AWS::Glue::Table").values()
    assert tables
    for table in tables:
        assert table["Properties"]["DatabaseName"] == "iiot_dev_lake"
        storage = table["Properties"]["TableInput"]["StorageDescriptor"]
        assert storage["InputFormat"] == "org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat"
        assert "_symlink_format_manifest/" in json.dumps(storage["Location"])


def test_emr_serverless_application_stops_when_idle(synth: Synth) -> None:
    template(synth, "dev", "lake").has_resource_properties(
        "AWS::EMRServerless::Application",
        {
            "Type": "SPARK",
            "AutoStopConfiguration": {"Enabled": True, "IdleTimeoutMinutes": 10},
            "MaximumCapacity": {"Cpu": "16 vCPU", "Memory": "64 GB"},
        },
    )


def test_spark_role_writes_the_lake_and_only_its_log_prefix(synth: Synth) -> None:
    spark = statements(synth, "dev", "lake", role="SparkJobRole")
    writes = [s for s in spark if "s3:PutObject" in s["Action"]]
    targets = json.dumps([s["Resource"] for s in writes])
    assert "iiot-dev-lake-" in targets
    assert "/emr/*" in targets
    assert "iiot-dev-artifacts-" not in targets
    for statement in spark:
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        assert not [a for a in actions if a.startswith("s3:") and "*" in a], statement


# --- ingestion -----------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_stream_is_sized_from_the_workload(synth: Synth, env: str) -> None:
    """Shards from config/environments.py's size_stream (records, bytes in, bytes out to the
    polling consumers); tests/infra/test_sizing.py checks the sizing itself."""
    config = environments()[env]
    template(synth, env, "ingestion").has_resource_properties(
        "AWS::Kinesis::Stream",
        {
            "Name": f"iiot-{env}-telemetry",
            "ShardCount": config.stream_sizing().shards,
            "StreamModeDetails": {"StreamMode": "PROVISIONED"},
            "StreamEncryption": {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"},
        },
    )


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_no_per_reading_stream_exists(synth: Synth, env: str) -> None:
    """The rules read the compact batches themselves: no stack creates the retired readings
    stream (one JSON record per reading), and the only streams are the telemetry stream, the
    anomaly stream and the rules' dead letters."""
    streams = [
        body["Properties"]["Name"]
        for (name, _), stack in synth.templates.items()
        if name == env
        for body in stack["Resources"].values()
        if body["Type"] == "AWS::Kinesis::Stream"
    ]
    assert sorted(streams) == sorted(
        f"iiot-{env}-{s}" for s in ("telemetry", "anomalies", "stream-dead-letters")
    )


def test_firehose_lands_partitioned_encrypted_batches_where_bronze_reads(synth: Synth) -> None:
    template(synth, "dev", "ingestion").has_resource_properties(
        "AWS::KinesisFirehose::DeliveryStream",
        {
            "DeliveryStreamType": "KinesisStreamAsSource",
            "ExtendedS3DestinationConfiguration": {
                "CompressionFormat": "UNCOMPRESSED",
                "Prefix": Match.string_like_regexp(r"^landing/date=!\{timestamp:yyyy-MM-dd\}"),
                "ErrorOutputPrefix": Match.string_like_regexp("firehose:error-output-type"),
                "EncryptionConfiguration": {"KMSEncryptionConfig": Match.any_value()},
                "CloudWatchLoggingOptions": {"Enabled": True},
            },
        },
    )


# --- IoT -----------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_one_thing_group_per_factory(synth: Synth, env: str) -> None:
    groups = resources(synth, env, "iot", "AWS::IoT::ThingGroup")
    names = sorted(g["Properties"]["ThingGroupName"] for g in groups.values())
    assert names == sorted(f"iiot-{env}-{f}" for f in environments()[env].factories)


def test_gateway_policy_is_limited_to_the_thing_itself(synth: Synth) -> None:
    policy = next(iter(resources(synth, "dev", "iot", "AWS::IoT::Policy").values()))
    document = json.dumps(policy["Properties"]["PolicyDocument"])
    statements_ = policy["Properties"]["PolicyDocument"]["Statement"]
    connect = next(s for s in statements_ if s["Action"] == "iot:Connect")
    assert "client/${iot:Connection.Thing.ThingName}" in json.dumps(connect["Resource"])
    assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
    assert '"iot:*"' not in document
    for statement in statements_:
        if statement["Action"] in ("iot:Subscribe", "iot:Receive"):
            for resource in statement["Resource"]:  # its own thing's topics only
                assert "$aws/things/${iot:Connection.Thing.ThingName}" in json.dumps(resource)
    publish = next(s for s in statements_ if s["Action"] == "iot:Publish")
    published = json.dumps(publish["Resource"])
    # The environment's upload topics of the gateway's own factory only: a gateway cannot
    # publish another factory's data (its thing's factory_id attribute, a policy variable).
    factory = "${iot:Connection.Thing.Attributes[factory_id]}"
    assert f"topic/iiot/dev/factory/{factory}/sensor/data" in published
    assert f"topic/iiot/dev/factory/{factory}/anomalies" in published
    assert "factory/+/" not in published
    assert "factory/*" not in published
    assert f"topic/{topics.SENSOR_DATA}" not in published
    # Client devices: it verifies its own factory's sensors only.
    verify = next(
        s for s in statements_
        if s["Action"] == "greengrass:VerifyClientDeviceIoTCertificateAssociation"
    )  # fmt: skip
    assert f"thing/iiot-dev-{factory}-*" in json.dumps(verify["Resource"])


def test_sensors_may_only_discover_their_gateway(synth: Synth) -> None:
    policies = resources(synth, "dev", "iot", "AWS::IoT::Policy").values()
    (sensor,) = [p for p in policies if p["Properties"]["PolicyName"] == "iiot-dev-sensor"]
    (statement,) = sensor["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == "greengrass:Discover"
    assert "thing/${iot:Connection.Thing.ThingName}" in json.dumps(statement["Resource"])


def test_token_exchange_role_gets_only_what_the_components_need(synth: Synth) -> None:
    """The gateways' AWS credentials may read their components' artifacts and the published
    models, nothing else: uploads go through IoT Core (factory-scoped), not to the streams."""
    iot = template(synth, "dev", "iot")
    iot.has_resource_properties(
        "AWS::IAM::Role",
        {
            "AssumeRolePolicyDocument": {
                "Statement": [
                    Match.object_like({"Principal": {"Service": "credentials.iot.amazonaws.com"}})
                ]
            }
        },
    )
    iot.has_resource_properties("AWS::IoT::RoleAlias", {"CredentialDurationSeconds": 3600})
    (role_id,) = [
        name for name, body in resources(synth, "dev", "iot", "AWS::IAM::Role").items()
        if "credentials.iot" in json.dumps(body["Properties"]["AssumeRolePolicyDocument"])
    ]  # fmt: skip
    actions = set()
    for concern in ("iot", "edge", "ml"):
        for policy in resources(synth, "dev", concern, "AWS::IAM::Policy").values():
            if role_id in json.dumps(policy["Properties"]["Roles"]):
                for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                    action = statement["Action"]
                    actions |= set(action if isinstance(action, list) else [action])
    assert actions == {"s3:GetObject", "kms:Decrypt"}


def test_rules_route_uploads_to_kinesis_and_log_errors(synth: Synth) -> None:
    rules = resources(synth, "dev", "iot", "AWS::IoT::TopicRule")
    by_sql = {r["Properties"]["TopicRulePayload"]["Sql"]: r for r in rules.values()}
    telemetry = by_sql["SELECT * FROM 'iiot/dev/factory/+/sensor/data'"]
    kinesis = telemetry["Properties"]["TopicRulePayload"]["Actions"][0]["Kinesis"]
    # Binary batches: the topic's factory (the only one its gateway may use) keys the record.
    assert kinesis["PartitionKey"] == "${topic(4)}/${newuuid()}"
    anomalies = by_sql[
        "SELECT * FROM 'iiot/dev/factory/+/anomalies' WHERE factory_id = topic(4)"
    ]  # an anomaly naming another factory than its topic's is not routed
    assert "Kinesis" in anomalies["Properties"]["TopicRulePayload"]["Actions"][0]
    for rule in rules.values():
        assert "CloudwatchLogs" in rule["Properties"]["TopicRulePayload"]["ErrorAction"]
        assert rule["Properties"]["RuleName"].startswith("iiot_dev_")


def test_factory_mismatches_are_logged_counted_and_alarmed(synth: Synth) -> None:
    rules = resources(synth, "dev", "iot", "AWS::IoT::TopicRule").values()
    (mismatch,) = [
        r for r in rules if "factory_id <> topic(4)" in r["Properties"]["TopicRulePayload"]["Sql"]
    ]
    actions = mismatch["Properties"]["TopicRulePayload"]["Actions"]
    assert {next(iter(a)) for a in actions} == {"CloudwatchLogs", "CloudwatchMetric"}
    metric = next(a["CloudwatchMetric"] for a in actions if "CloudwatchMetric" in a)
    alarms = resources(synth, "dev", "monitoring", "AWS::CloudWatch::Alarm").values()
    assert any(
        a["Properties"].get("MetricName") == metric["MetricName"]
        and a["Properties"]["Namespace"] == metric["MetricNamespace"]
        for a in alarms
    )


def test_gateway_health_becomes_the_metric_the_backlog_alarm_watches(synth: Synth) -> None:
    from sensor_buffer.config import STATUS_TOPIC

    rules = resources(synth, "dev", "iot", "AWS::IoT::TopicRule").values()
    health = next(
        r for r in rules if "gateway/status" in r["Properties"]["TopicRulePayload"]["Sql"]
    )
    payload = health["Properties"]["TopicRulePayload"]
    assert STATUS_TOPIC.format(factory_id="+") in payload["Sql"]
    metrics = {
        a["CloudwatchMetric"]["MetricName"]: a["CloudwatchMetric"] for a in payload["Actions"]
    }
    assert metrics["BacklogReadings"]["MetricValue"] == "${backlog_readings}"
    alarm = next(
        a
        for a in resources(synth, "dev", "monitoring", "AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == "BacklogReadings"
    )
    assert alarm["Properties"]["Namespace"] == metrics["BacklogReadings"]["MetricNamespace"]
    # The gateways may publish their status, only under their own factory attribute.
    policy = next(iter(resources(synth, "dev", "iot", "AWS::IoT::Policy").values()))
    assert "factory/${iot:Connection.Thing.Attributes[factory_id]}/gateway/status" in json.dumps(
        policy["Properties"]["PolicyDocument"]
    )


# --- alerting ------------------------------------------------------------------------------


def test_alert_topics_are_encrypted_and_tls_only(synth: Synth) -> None:
    alerting = template(synth, "dev", "alerting")
    alerting.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
    for topic in resources(synth, "dev", "alerting", "AWS::SNS::Topic").values():
        assert topic["Properties"]["KmsMasterKeyId"]


def test_alert_router_reads_the_anomaly_stream_with_partial_failures(synth: Synth) -> None:
    alerting = template(synth, "dev", "alerting")
    alerting.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "BisectBatchOnFunctionError": True,
            "DestinationConfig": {"OnFailure": {"Destination": Match.any_value()}},
        },
    )
    alerting.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "lambdas.alert_router.handler.handler",
            "Architectures": ["arm64"],
            "TracingConfig": {"Mode": "Active"},
        },
    )


def test_alert_router_gets_every_setting_it_requires(synth: Synth) -> None:
    from lambdas.alert_router.models import AlertSettings

    function = next(iter(resources(synth, "dev", "alerting", "AWS::Lambda::Function").values()))
    variables = function["Properties"]["Environment"]["Variables"]
    # from_environ raises KeyError for a required variable the stack does not set.
    AlertSettings.from_environ(dict.fromkeys(variables, "set-by-the-stack"))


def test_alert_tables_have_point_in_time_recovery_and_ttl(synth: Synth) -> None:
    tables = resources(synth, "dev", "alerting", "AWS::DynamoDB::Table")
    assert len(tables) == 3  # cooldowns, idempotency, machine state
    for table in tables.values():
        props = table["Properties"]
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert props["TimeToLiveSpecification"]["Enabled"] is True
        assert props["SSESpecification"]["SSEEnabled"] is True


def test_maintenance_rule_fills_the_machine_state_the_router_reads(synth: Synth) -> None:
    """The maintenance system's completed jobs (the environment's factory topic, only the
    topic's own factory) go into the machine state table, keyed by machine and completion
    time; the router gets the table and may only Query it."""
    alerting = template(synth, "dev", "alerting")
    table_id = alerting.find_resources(
        "AWS::DynamoDB::Table",
        {
            "Properties": {
                "KeySchema": [
                    {"AttributeName": "machine_id", "KeyType": "HASH"},
                    {"AttributeName": "completed_at_ms", "KeyType": "RANGE"},
                ]
            }
        },
    )
    (table,) = table_id
    (rule,) = resources(synth, "dev", "alerting", "AWS::IoT::TopicRule").values()
    payload = rule["Properties"]["TopicRulePayload"]
    assert rule["Properties"]["RuleName"] == "iiot_dev_MaintenanceRule"
    assert "FROM 'iiot/dev/factory/+/maintenance' WHERE factory_id = topic(4)" in payload["Sql"]
    for field in ("machine_id", "completed_at_ms", "factory_id", "maintenance_id"):
        assert field in payload["Sql"]
    ((action,),) = [a.values() for a in payload["Actions"]]
    assert action["PutItem"]["TableName"] == {"Ref": table}
    assert "CloudwatchLogs" in payload["ErrorAction"]
    function = next(iter(resources(synth, "dev", "alerting", "AWS::Lambda::Function").values()))
    variables = function["Properties"]["Environment"]["Variables"]
    assert variables["MACHINE_STATE_TABLE"] == {"Ref": table}
    granted = [
        statement
        for statement in statements(synth, "dev", "alerting")
        if {"Fn::GetAtt": [table, "Arn"]} in _as_list(statement["Resource"])
    ]
    actions = sorted(a for s in granted for a in _as_list(s["Action"]))
    # The router's Query and the rule's PutItem, nothing else on this table.
    assert actions == ["dynamodb:PutItem", "dynamodb:Query"]


def _as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else [value]


# --- warehouse and time series -------------------------------------------------------------


def test_redshift_is_private_encrypted_with_managed_credentials(synth: Synth) -> None:
    warehouse = template(synth, "dev", "warehouse")
    warehouse.has_resource_properties(
        "AWS::RedshiftServerless::Namespace",
        {
            "ManageAdminPassword": True,
            "KmsKeyId": Match.any_value(),
            "LogExports": ["userlog", "connectionlog", "useractivitylog"],
        },
    )
    warehouse.has_resource_properties(
        "AWS::RedshiftServerless::Workgroup",
        {"PubliclyAccessible": False, "BaseCapacity": 8, "SubnetIds": Match.any_value()},
    )
    workgroup = next(
        iter(resources(synth, "dev", "warehouse", "AWS::RedshiftServerless::Workgroup").values())
    )
    assert len(workgroup["Properties"]["SubnetIds"]) == 3


def test_spectrum_reads_the_lake_and_creates_the_external_schema(synth: Synth) -> None:
    warehouse = synth.template("dev", "warehouse")
    text = json.dumps(warehouse)
    assert "CREATE EXTERNAL SCHEMA IF NOT EXISTS lake FROM DATA CATALOG" in text
    assert "iiot_dev_lake" in text
    for statement in statements(synth, "dev", "warehouse"):
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        assert "s3:PutObject" not in actions


def test_external_schema_statement_is_waited_for(synth: Synth) -> None:
    from stacks.constructs import redshift_sql_handler

    (statement,) = resources(synth, "dev", "warehouse", "Custom::RedshiftStatement").values()
    props = statement["Properties"]
    assert props["Sql"]["Fn::Join"][1][0].startswith("CREATE EXTERNAL SCHEMA IF NOT EXISTS lake")
    assert props["Database"] == "iiot"
    # The provider polls is_complete; both handlers are the tested module's code, inline.
    functions = resources(synth, "dev", "warehouse", "AWS::Lambda::Function")
    handlers = {
        body["Properties"]["Handler"]: body["Properties"]["Code"]["ZipFile"]
        for body in functions.values()
        if "ZipFile" in body["Properties"].get("Code", {})
    }
    source = Path(redshift_sql_handler.__file__).read_text()
    assert handlers == {"index.on_event": source, "index.is_complete": source}
    (machine,) = resources(synth, "dev", "warehouse", "AWS::StepFunctions::StateMachine").values()
    assert machine["Properties"]["LoggingConfiguration"]["Level"] == "ALL"


@pytest.mark.parametrize(
    ("env", "deployment"), [("dev", "SINGLE_AZ"), ("prod", "WITH_MULTIAZ_STANDBY")]
)
def test_influxdb_is_private_with_credentials_in_secrets_manager(
    synth: Synth, env: str, deployment: str
) -> None:
    timeseries = template(synth, env, "timeseries")
    timeseries.has_resource_properties(
        "AWS::Timestream::InfluxDBInstance",
        {"PubliclyAccessible": False, "DeploymentType": deployment},
    )
    instance = next(
        iter(resources(synth, env, "timeseries", "AWS::Timestream::InfluxDBInstance").values())
    )
    # A dynamic reference: the password never appears in the template.
    assert "{{resolve:secretsmanager:" in json.dumps(instance["Properties"]["Password"])
    timeseries.has_resource_properties(
        "AWS::SecretsManager::Secret", {"KmsKeyId": Match.any_value()}
    )


# --- monitoring ----------------------------------------------------------------------------


def test_alarms_cover_every_moving_part(synth: Synth) -> None:
    alarms = resources(synth, "dev", "monitoring", "AWS::CloudWatch::Alarm")
    metrics = {a["Properties"].get("MetricName") for a in alarms.values()}
    assert {
        "GetRecords.IteratorAgeMilliseconds",
        "DeliveryToS3.Success",
        "BacklogReadings",
        "Errors",
    } <= metrics
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"], "every alarm notifies the operations topic"
    template(synth, "dev", "monitoring").resource_count_is("AWS::CloudWatch::Dashboard", 1)


def test_influx_writer_gets_every_setting_it_requires(synth: Synth) -> None:
    from lambdas.influx_writer.models import WriterSettings

    function = next(iter(resources(synth, "dev", "timeseries", "AWS::Lambda::Function").values()))
    assert function["Properties"]["Handler"] == "lambdas.influx_writer.handler.handler"
    assert function["Properties"]["VpcConfig"]["SubnetIds"]
    variables = function["Properties"]["Environment"]["Variables"]
    WriterSettings.from_environ(dict.fromkeys(variables, "set-by-the-stack"))


def test_influx_writer_only_reads_the_telemetry_stream(synth: Synth) -> None:
    """The writer is one of the telemetry stream's consumers and puts nothing on any stream
    (it no longer forwards readings to the stream rules)."""
    function = next(iter(resources(synth, "dev", "timeseries", "AWS::Lambda::Function").values()))
    assert "READINGS_STREAM_NAME" not in function["Properties"]["Environment"]["Variables"]
    actions = json.dumps([s["Action"] for s in statements(synth, "dev", "timeseries")])
    assert "kinesis:PutRecord" not in actions
    (mapping,) = resources(synth, "dev", "timeseries", "AWS::Lambda::EventSourceMapping").values()
    assert "Telemetry" in json.dumps(mapping["Properties"]["EventSourceArn"])
    endpoints = resources(synth, "dev", "network", "AWS::EC2::VPCEndpoint")
    assert any(
        "kinesis-streams" in json.dumps(e["Properties"]["ServiceName"]) for e in endpoints.values()
    )


# --- streaming -----------------------------------------------------------------------------


def _rules(synth: Synth, env: str = "dev") -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    application = next(
        iter(resources(synth, env, "streaming", "AWS::KinesisAnalyticsV2::Application").values())
    )
    configuration = application["Properties"]["ApplicationConfiguration"]
    groups = {
        g["PropertyGroupId"]: g["PropertyMap"]
        for g in configuration["EnvironmentProperties"]["PropertyGroups"]
    }
    return application, groups


def test_flink_runs_the_sql_runner_from_the_kinesis_streams(synth: Synth) -> None:
    from kda_sql.decoder.build import FORMAT_IDENTIFIER

    application, groups = _rules(synth)
    props = application["Properties"]
    assert props["RuntimeEnvironment"].startswith("FLINK-")
    assert groups["kinesis.analytics.flink.run.options"]["python"] == "kda_sql/runner.py"
    rules = groups["StreamRules"]  # kda_sql/runner.py: PROPERTY_GROUP
    assert rules["source.connector"] == "kinesis"
    assert rules["sink.connector"] == "kinesis"
    # The rules read the gateways' compact batches (raw) from the telemetry stream and decode
    # them in the source; anomalies go to the anomaly stream, refused records to dead letters.
    assert "Telemetry" in json.dumps(rules["source.stream.arn"])
    assert rules["source.format"] == FORMAT_IDENTIFIER
    assert "Anomalies" in json.dumps(rules["sink.stream.arn"])
    assert rules["deadletter.connector"] == "kinesis"
    assert "DeadLetters" in json.dumps(rules["deadletter.stream.arn"])
    assert rules["deadletter.format"] == "json"
    configuration = props["ApplicationConfiguration"]
    assert configuration["ApplicationSnapshotConfiguration"] == {"SnapshotsEnabled": True}
    code = configuration["ApplicationCodeConfiguration"]
    assert code["CodeContentType"] == "ZIPFILE"


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_flink_reads_telemetry_through_its_own_enhanced_fan_out_consumer(
    synth: Synth, env: str
) -> None:
    """An independent consumer: the InfluxDB writer's and Firehose's reads are unaffected."""
    streaming = synth.template(env, "streaming")["Resources"]
    ((consumer_id, consumer),) = [
        (name, body)
        for name, body in streaming.items()
        if body["Type"] == "AWS::Kinesis::StreamConsumer"
    ]
    application, groups = _rules(synth, env)
    rules = groups["StreamRules"]
    assert consumer["Properties"]["ConsumerName"] == f"iiot-{env}-stream-rules"
    assert consumer["Properties"]["StreamARN"] == rules["source.stream.arn"]
    assert rules["source.source.reader.type"] == "EFO"
    assert rules["source.source.efo.consumer.name"] == f"iiot-{env}-stream-rules"
    # CloudFormation registers it; the job neither registers nor deregisters it.
    assert rules["source.source.efo.lifecycle"] == "SELF_MANAGED"
    assert consumer_id in application["DependsOn"]
    (dead_letters,) = [
        body for body in streaming.values() if body["Type"] == "AWS::Kinesis::Stream"
    ]
    assert dead_letters["Properties"]["StreamEncryption"] == {
        "EncryptionType": "KMS",
        "KeyId": "alias/aws/kinesis",
    }


def test_flink_role_has_exactly_the_enhanced_fan_out_grants(synth: Synth) -> None:
    """Telemetry: describe the stream and list its shards, describe the consumer and subscribe
    through it; no polling (GetRecords) and no consumer registration. Writes: the anomaly and
    dead-letter streams only."""
    streaming = synth.template("dev", "streaming")["Resources"]
    (consumer_id,) = [
        n for n, b in streaming.items() if b["Type"] == "AWS::Kinesis::StreamConsumer"
    ]
    (stream_id,) = [n for n, b in streaming.items() if b["Type"] == "AWS::Kinesis::Stream"]
    granted: dict[str, set[str]] = {}  # kinesis action -> resources (as JSON)
    for statement in statements(synth, "dev", "streaming", role="ApplicationRole"):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [
            statement["Action"]]  # fmt: skip
        targets = statement["Resource"] if isinstance(statement["Resource"], list) else [
            statement["Resource"]]  # fmt: skip
        for action in actions:
            if action.startswith("kinesis:"):
                granted.setdefault(action, set()).update(json.dumps(t) for t in targets)

    def named(*parts: str) -> set[str]:
        return {t for targets in granted.values() for t in targets if any(p in t for p in parts)}

    consumer = json.dumps({"Fn::GetAtt": [consumer_id, "ConsumerARN"]})
    (telemetry,) = named("Telemetry")
    writes = named("Anomalies", stream_id)
    assert len(writes) == 2
    assert granted == {
        "kinesis:DescribeStreamConsumer": {consumer},
        "kinesis:SubscribeToShard": {consumer},
        "kinesis:DescribeStreamSummary": {telemetry},
        "kinesis:ListShards": {telemetry, *writes},
        "kinesis:PutRecord": writes,
        "kinesis:PutRecords": writes,
    }


def test_flink_property_group_is_the_runners(synth: Synth) -> None:
    from kda_sql import runner

    application = next(
        iter(resources(synth, "dev", "streaming", "AWS::KinesisAnalyticsV2::Application").values())
    )
    groups = application["Properties"]["ApplicationConfiguration"]["EnvironmentProperties"]
    assert runner.PROPERTY_GROUP in {g["PropertyGroupId"] for g in groups["PropertyGroups"]}


# --- edge ----------------------------------------------------------------------------------


def _recipe(inline_recipe: Any) -> dict[str, Any]:
    """An inline recipe as data; CloudFormation references inside it become "<ref>"."""
    if isinstance(inline_recipe, str):
        return json.loads(inline_recipe)
    separator, parts = inline_recipe["Fn::Join"]
    return json.loads(separator.join(p if isinstance(p, str) else "<ref>" for p in parts))


def test_components_are_published_with_their_recipe_and_asset(synth: Synth) -> None:
    versions = resources(synth, "dev", "edge", "AWS::GreengrassV2::ComponentVersion")
    recipes = {
        recipe["ComponentName"]: recipe
        for recipe in (_recipe(v["Properties"]["InlineRecipe"]) for v in versions.values())
    }
    # Component names are account-wide in a region: each environment publishes its own, and
    # the recipes name each other by the environment's names.
    assert set(recipes) == {
        "com.iiot.dev.SensorBuffer",
        "com.iiot.dev.FailurePredictor",
        "com.iiot.dev.OpcUaCollector",
    }
    collector = recipes["com.iiot.dev.OpcUaCollector"]
    assert "com.iiot.dev.SensorBuffer" in collector["ComponentDependencies"]
    predictor = recipes["com.iiot.dev.FailurePredictor"]
    assert "com.iiot.dev.FailureModel" in predictor["ComponentDependencies"]
    defaults = predictor["ComponentConfiguration"]["DefaultConfiguration"]
    assert defaults["modelDir"].startswith("{com.iiot.dev.FailureModel:artifacts:")
    assert defaults["anomalyModelDir"].startswith("{com.iiot.dev.AnomalyModel:artifacts:")
    for recipe in recipes.values():
        text = json.dumps(recipe)
        assert "com.iiot.SensorBuffer" not in text
        assert "com.iiot.FailureModel" not in text
        assert "com.iiot.AnomalyModel" not in text
        assert "BUCKET_NAME" not in text  # the gdk placeholder is replaced by the asset
        for manifest in recipe["Manifests"]:
            (artifact,) = manifest["Artifacts"]  # the CDK asset, a reference
            assert artifact == {"URI": "<ref>", "Unarchive": "ZIP"}
    for version in versions.values():
        assert "cdk-hnb659fds-assets" in json.dumps(version["Properties"]["InlineRecipe"])


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_one_deployment_per_factory_with_rollout_and_abort(synth: Synth, env: str) -> None:
    config = environments()[env]
    deployments = resources(synth, env, "edge", "AWS::GreengrassV2::Deployment")
    assert len(deployments) == len(config.factories)
    for deployment in deployments.values():
        job = deployment["Properties"]["IotJobConfiguration"]
        assert job["JobExecutionsRolloutConfig"]["MaximumPerMinute"] == (
            config.edge_rollout.max_per_minute
        )
        criteria = job["AbortConfig"]["CriteriaList"][0]
        assert criteria["ThresholdPercentage"] == config.edge_rollout.failure_threshold_percent
        assert deployment["Properties"]["DeploymentPolicies"]["FailureHandlingPolicy"] == "ROLLBACK"
        # No model published in this synth: the gateways run the buffer and the sensor path.
        assert set(deployment["Properties"]["Components"]) == {
            f"com.iiot.{env}.SensorBuffer",
            "aws.greengrass.clientdevices.Auth",
            "aws.greengrass.clientdevices.mqtt.Moquette",
            "aws.greengrass.clientdevices.IPDetector",
            "aws.greengrass.clientdevices.mqtt.Bridge",
        }


def test_deployments_configure_the_catalogs_thresholds(synth: Synth, catalog: Any) -> None:
    deployment = next(
        iter(resources(synth, "dev", "edge", "AWS::GreengrassV2::Deployment").values())
    )
    components = deployment["Properties"]["Components"]
    merge = json.loads(components["com.iiot.dev.SensorBuffer"]["ConfigurationUpdate"]["Merge"])
    assert merge["factoryId"] in environments()["dev"].factories
    # the sensors' metrics; a derived series (the predictor's failure_probability) has none
    assert set(merge["thresholds"]) == set(catalog.measured)
    for name, metric in catalog.measured.items():
        assert merge["thresholds"][name]["max"] == metric.edge.max
        assert merge["thresholds"][name]["debounce"] == metric.edge.debounce
    topics_ = json.dumps(merge["accessControl"])
    assert f"factory/{merge['factoryId']}/readings" in topics_
    assert f"factory/{merge['factoryId']}/predictions" in topics_  # the derived series, in
    # The environment's IoT Core topics of the factory: configured, and the only ones the
    # relay may use (and the only ones the gateway's IoT policy lets it publish).
    factory = merge["factoryId"]
    assert merge["uploadTopic"] == f"iiot/dev/factory/{factory}/sensor/data"
    assert merge["anomaliesTopic"] == f"iiot/dev/factory/{factory}/anomalies"
    (cloud,) = merge["accessControl"]["aws.greengrass.ipc.mqttproxy"].values()
    assert cloud["resources"] == [merge["uploadTopic"], merge["anomaliesTopic"]]
    assert (
        "com.iiot.dev.SensorBuffer:mqttproxy:1"
        in merge["accessControl"]["aws.greengrass.ipc.mqttproxy"]
    )
    bridge = json.loads(
        components["aws.greengrass.clientdevices.mqtt.Bridge"]["ConfigurationUpdate"]["Merge"]
    )
    assert bridge["mqttTopicMapping"]["GatewayStatus"]["targetTopicPrefix"] == "iiot/dev/"


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_each_factory_deploys_the_sensor_path(synth: Synth, env: str) -> None:
    """Broker, client device auth with the factory's device group, IP detector, and the
    bridge that hands the sensors' readings to the buffer: the deployments' components and
    their merged configuration."""
    config = environments()[env]
    deployments = resources(synth, env, "edge", "AWS::GreengrassV2::Deployment").values()
    factories = set()
    for deployment in deployments:
        components = deployment["Properties"]["Components"]
        buffer = json.loads(
            components[f"com.iiot.{env}.SensorBuffer"]["ConfigurationUpdate"]["Merge"]
        )
        factory = buffer["factoryId"]
        factories.add(factory)
        readings = f"factory/{factory}/readings"
        # The buffer reads its readings from the local publish/subscribe...
        assert readings in json.dumps(buffer["accessControl"]["aws.greengrass.ipc.pubsub"])
        # ...where the bridge puts what the sensors publish on the local broker.
        bridge = json.loads(
            components["aws.greengrass.clientdevices.mqtt.Bridge"]["ConfigurationUpdate"]["Merge"]
        )
        assert bridge["mqttTopicMapping"]["SensorReadings"] == {
            "topic": readings,
            "source": "LocalMqtt",
            "target": "Pubsub",
        }
        auth = json.loads(
            components["aws.greengrass.clientdevices.Auth"]["ConfigurationUpdate"]["Merge"]
        )
        groups = auth["deviceGroups"]
        assert groups["formatVersion"] == "2021-03-05"
        (group,) = groups["definitions"].values()
        assert group["selectionRule"] == f"thingName: iiot-{env}-{factory}-*"
        policy = groups["policies"][group["policyName"]]
        granted = {
            operation: statement["resources"]
            for statement in policy.values()
            for operation in statement["operations"]
        }
        # Sensors may connect and publish their factory's readings, nothing else.
        assert granted == {"mqtt:connect": ["*"], "mqtt:publish": [f"mqtt:topic:{readings}"]}
        for name in (
            "aws.greengrass.clientdevices.mqtt.Moquette",
            "aws.greengrass.clientdevices.IPDetector",
        ):
            assert re.fullmatch(r"\d+\.\d+\.\d+", components[name]["ComponentVersion"])
    assert factories == set(config.factories)


def test_gateways_may_fetch_exactly_the_component_artifacts(synth: Synth) -> None:
    policy = next(iter(resources(synth, "dev", "edge", "AWS::IAM::Policy").values()))
    statement = policy["Properties"]["PolicyDocument"]["Statement"][0]
    assert statement["Action"] == "s3:GetObject"
    assert "*" not in json.dumps(statement["Resource"])
    assert "TokenExchangeRole" in json.dumps(policy["Properties"]["Roles"])


# --- ML ------------------------------------------------------------------------------------


def test_model_registry_and_pipeline_with_the_generated_definition(synth: Synth) -> None:
    ml = template(synth, "dev", "ml")
    ml.has_resource_properties(
        "AWS::SageMaker::ModelPackageGroup", {"ModelPackageGroupName": "iiot-dev-failure-model"}
    )
    (pipeline,) = resources(synth, "dev", "ml", "AWS::SageMaker::Pipeline").values()
    body = pipeline["Properties"]["PipelineDefinition"]["PipelineDefinitionBody"]
    text, variables = body["Fn::Sub"]
    definition = json.loads(text)
    assert [step["Name"] for step in definition["Steps"]][:3] == ["Features", "Train", "Evaluate"]
    # Every placeholder of the generated definition is substituted by the stack.
    for name in ("PlatformImageUri", "SageMakerExecutionRoleName", "SageMakerExecutionRoleArn"):
        if "${" + name + "}" in text:
            assert name in variables


# Each model component and what publishes it: its package group, the zip the build copies (the
# pipeline's compile output; the anomaly package's ModelDataUrl is its zip) and the setting the
# notification names.
PUBLISHED = {
    "com.iiot.FailureModel": (
        "iiot-dev-failure-model",
        '"${OUTPUT}/component/failure_model.zip"',
        "edge_model_version",
    ),
    "com.iiot.AnomalyModel": (
        "iiot-dev-anomaly-model",
        '"${MODEL_DATA_URL}"',
        "edge_anomaly_model_version",
    ),
}


def _publish_project(synth: Synth, component: str) -> dict[str, Any]:
    (project,) = [
        body["Properties"]
        for body in resources(synth, "dev", "ml", "AWS::CodeBuild::Project").values()
        if "create-component-version" in body["Properties"]["Source"]["BuildSpec"]
        and f"greengrass/{component}/" in body["Properties"]["Source"]["BuildSpec"]
    ]
    return project


@pytest.mark.parametrize("component", sorted(PUBLISHED))
def test_approval_starts_the_publish_flow(synth: Synth, component: str) -> None:
    group, source, setting = PUBLISHED[component]
    ml = template(synth, "dev", "ml")
    ml.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": {
                "source": ["aws.sagemaker"],
                "detail-type": ["SageMaker Model Package State Change"],
                "detail": {
                    "ModelPackageGroupName": [group],
                    "ModelApprovalStatus": ["Approved"],
                },
            }
        },
    )
    local = component.rsplit(".", 1)[-1]
    machines = resources(synth, "dev", "ml", "AWS::StepFunctions::StateMachine").values()
    definitions = [json.dumps(machine["Properties"]["DefinitionString"]) for machine in machines]
    (definition,) = [text for text in definitions if f"com.iiot.dev.{local} " in text]
    for state in ("DescribeModelPackage", "PublishComponent", "Notify"):
        assert state in definition
    commands = json.loads(_publish_project(synth, component)["Source"]["BuildSpec"])["phases"][
        "build"
    ]["commands"]
    assert f'aws s3 cp {source} "${{TARGET}}"' in commands
    # The notification says how to deploy the version: the environment's context key.
    assert f"npx cdk deploy -c dev:{setting}=1.0.{{}} iiot-dev/edge" in definition


def test_the_publish_flows_share_the_ml_topic(synth: Synth) -> None:
    assert len(resources(synth, "dev", "ml", "AWS::SNS::Topic")) == 1
    assert len(resources(synth, "dev", "ml", "AWS::KMS::Key")) == 1
    assert len(resources(synth, "dev", "ml", "AWS::StepFunctions::StateMachine")) == 2


@pytest.mark.parametrize("component", sorted(PUBLISHED))
def test_publish_job_runs_the_repository_script_on_the_recipe(synth: Synth, component: str) -> None:
    from stacks.artifacts import ROOT

    project = _publish_project(synth, component)
    commands = json.loads(project["Source"]["BuildSpec"])["phases"]["build"]["commands"]
    (run,) = [command for command in commands if "publish_component.py" in command]
    assert run.startswith("python3 publish_component.py --recipe recipe.yaml ")
    assert commands.index(run) < commands.index(
        "aws greengrassv2 create-component-version --inline-recipe fileb://recipe.json"
    )
    variables = {v["Name"]: v["Value"] for v in project["Environment"]["EnvironmentVariables"]}
    assert variables["COMPONENT_NAME"] == component.replace("com.iiot.", "com.iiot.dev.")
    # CodeBuild's S3 source is a zip: the recipe and the script side by side, as in the repo.
    (asset_hash,) = re.findall(r"([0-9a-f]{64})\.zip", json.dumps(project["Source"]["Location"]))
    source = synth.outdir / f"asset.{asset_hash}"
    assert sorted(path.name for path in source.iterdir()) == [
        "publish_component.py",
        "recipe.yaml",
    ]
    for name, original in (
        ("recipe.yaml", f"edge_components/{component}/recipe.yaml"),
        ("publish_component.py", "ml_pipeline/publish_component.py"),
    ):
        assert (source / name).read_bytes() == (ROOT / original).read_bytes()


def test_gateways_may_read_only_published_models(synth: Synth) -> None:
    policies = resources(synth, "dev", "ml", "AWS::IAM::Policy")
    gateway = next(p for p in policies.values() if "TokenExchangeRole" in json.dumps(p))
    statement = gateway["Properties"]["PolicyDocument"]["Statement"][0]
    assert statement["Action"] == "s3:GetObject"
    assert len(statement["Resource"]) == len(PUBLISHED)
    for component in PUBLISHED:
        assert f"greengrass/{component}/*" in json.dumps(statement["Resource"])


def test_lake_run_submits_each_job_in_order_on_a_schedule(synth: Synth) -> None:
    from spark_jobs.main import JOBS

    machine = next(
        iter(resources(synth, "dev", "lake", "AWS::StepFunctions::StateMachine").values())
    )
    definition = json.dumps(machine["Properties"]["DefinitionString"])
    positions = [
        definition.index(f'\\"--job\\",\\"{job}\\"')
        for job in ("bronze", "silver", "gold", "maintenance", "maintain")
    ]
    assert positions == sorted(positions)
    assert {"bronze", "silver", "gold", "maintenance", "maintain"} <= set(JOBS)
    assert "emr-serverless:startJobRun.sync" in definition
    assert "--lake-root" in definition
    # maintain registers the new partitions of every Glue table Spectrum reads.
    assert "AWSGlueDataCatalogHiveClientFactory" in definition
    tables = (
        "iiot_dev_lake.silver_readings,iiot_dev_lake.gold_machine_daily,"
        "iiot_dev_lake.gold_factory_daily,"
    )
    assert f'\\"--catalog-tables\\",\\"{tables}iiot_dev_lake.gold_machine_day_kpis\\"' in definition
    glue = [
        s
        for s in statements(synth, "dev", "lake", role="SparkJobRole")
        if "glue:BatchCreatePartition" in s["Action"]
    ]
    assert len(glue) == 1
    assert "glue:DeleteTable" not in glue[0]["Action"]
    assert "table/iiot_dev_lake/silver_readings" in json.dumps(glue[0]["Resource"])
    # The jobs run on the application's image, with its Python 3.11 (EMR's default is 3.9).
    assert "PYSPARK_PYTHON=/usr/bin/python3.11" in definition
    assert "spark.executorEnv.PYSPARK_PYTHON=/usr/bin/python3.11" in definition
    template(synth, "dev", "lake").has_resource_properties(
        "AWS::Events::Rule", {"ScheduleExpression": environments()["dev"].lake.schedule_cron}
    )


# --- artifacts built during deployment ------------------------------------------------------


def _image_builds(synth: Synth, concern: str) -> list[dict[str, Any]]:
    return [
        body["Properties"]
        for body in resources(synth, "dev", concern, "Custom::CDKContainerImageBuild").values()
    ]


def test_lake_jobs_run_on_the_image_built_from_the_repository(synth: Synth) -> None:
    from stacks.lake_stack import EMR_RELEASE

    (build,) = _image_builds(synth, "lake")
    # Built for the application's architecture, from EMR's image of the same release.
    assert "--platform linux/arm64" in build["buildCommand"]
    assert f"--build-arg EMR_RELEASE={EMR_RELEASE}" in build["buildCommand"]
    (application,) = resources(synth, "dev", "lake", "AWS::EMRServerless::Application").values()
    props = application["Properties"]
    assert props["Architecture"] == "ARM64"
    assert props["ReleaseLabel"] == EMR_RELEASE
    image = json.dumps(props["ImageConfiguration"]["ImageUri"])
    assert "SparkImageRepository" in image
    assert "ImageTag" in image
    # EMR Serverless may pull it, for this account's applications only.
    (repository,) = resources(synth, "dev", "lake", "AWS::ECR::Repository").values()
    (pull,) = repository["Properties"]["RepositoryPolicyText"]["Statement"]
    assert pull["Principal"] == {"Service": "emr-serverless.amazonaws.com"}
    assert sorted(pull["Action"]) == [
        "ecr:BatchGetImage",
        "ecr:DescribeImages",
        "ecr:GetDownloadUrlForLayer",
    ]
    assert "/applications/*" in json.dumps(pull["Condition"]["StringLike"]["aws:SourceArn"])
    assert repository["Properties"]["ImageScanningConfiguration"] == {"ScanOnPush": True}
    assert repository["Properties"]["EncryptionConfiguration"] == {"EncryptionType": "KMS"}


def test_pipeline_steps_run_the_image_built_from_the_repository(synth: Synth) -> None:
    (build,) = _image_builds(synth, "ml")
    assert "--platform linux/amd64" in build["buildCommand"]
    (pipeline,) = resources(synth, "dev", "ml", "AWS::SageMaker::Pipeline").values()
    _, variables = pipeline["Properties"]["PipelineDefinition"]["PipelineDefinitionBody"]["Fn::Sub"]
    image = json.dumps(variables["PlatformImageUri"])
    assert "PlatformImageRepository" in image
    assert "ImageTag" in image
    (repository,) = resources(synth, "dev", "ml", "AWS::ECR::Repository").values()
    assert repository["Properties"]["ImageScanningConfiguration"] == {"ScanOnPush": True}


def test_flink_package_is_built_with_the_connector_before_the_application(synth: Synth) -> None:
    from stacks.streaming_stack import CONNECTOR_COORDINATES, CONNECTOR_JAR, MERGE_JARS, RULES_JAR
    from tests.infra.conftest import TEST_PINS

    streaming = synth.template("dev", "streaming")["Resources"]
    ((build_id, build),) = resources(synth, "dev", "streaming", "Custom::CDKNodejsBuild").items()
    props = build["Properties"]
    commands = props["buildCommands"]
    # The jar is fetched with Maven (checksums enforced), then refused unless its SHA-256 is
    # the pinned one.
    download = next(c for c in commands if f"-Dartifact={CONNECTOR_COORDINATES}" in c)
    check = next(c for c in commands if "sha256sum" in c)
    assert commands.index(download) < commands.index(check)
    sha256 = TEST_PINS["pins:flink_connector_sha256"]
    assert check == f'echo "{sha256}  lib/{CONNECTOR_JAR}" | sha256sum --check --strict -'
    assert "--strict-checksums" in download
    # ... then merged with the decoder jar staged at synth into the one jar the app names.
    assert (
        commands.index(check)
        < commands.index(MERGE_JARS)
        < commands.index(next(c for c in commands if c.startswith("zip ")))
    )
    assert "iiot-dev-artifacts-" in json.dumps(props["destinationBucketName"])
    prefix = props["destinationKeyPrefix"]
    assert prefix.startswith("flink/")
    (application_id,) = [
        name
        for name, body in streaming.items()
        if body["Type"] == "AWS::KinesisAnalyticsV2::Application"
    ]
    application = streaming[application_id]
    assert build_id in application["DependsOn"]
    configuration = application["Properties"]["ApplicationConfiguration"]
    location = configuration["ApplicationCodeConfiguration"]["CodeContent"]["S3ContentLocation"]
    assert location["FileKey"] == f"{prefix}application.zip"
    assert "iiot-dev-artifacts-" in json.dumps(location["BucketARN"])
    groups = {
        g["PropertyGroupId"]: g["PropertyMap"]
        for g in configuration["EnvironmentProperties"]["PropertyGroups"]
    }
    assert groups["kinesis.analytics.flink.run.options"]["jarfile"] == f"lib/{RULES_JAR}"
    # The application reads exactly its package.
    reads = [
        s
        for s in statements(synth, "dev", "streaming", role="ApplicationRole")
        if "s3:GetObject" in s["Action"]
    ]
    assert [f"{prefix}application.zip" in json.dumps(s["Resource"]) for s in reads] == [True]


def test_flink_package_carries_the_decoder_and_its_merge_keeps_both_factories(
    tmp_path: Path,
) -> None:
    """The staged package holds the decoder jar built at synth (its format factory registered)
    and the merge tool; the build's merge command, run as CodeBuild runs it, leaves one jar
    that registers the connector's table factory and the decoder's format, and nothing else."""
    import shutil
    import subprocess
    import zipfile

    from stacks.streaming_stack import (
        CONNECTOR_JAR,
        DECODER_JAR,
        MERGE_JARS,
        RULES_JAR,
        stage_code,
    )

    code = stage_code()
    services = "META-INF/services/org.apache.flink.table.factories.Factory"
    decoder = code.directory / "lib" / DECODER_JAR
    with zipfile.ZipFile(decoder) as jar:
        decoder_factories = jar.read(services).decode().split()
        classes = [n for n in jar.namelist() if n.endswith(".class")]
    assert decoder_factories == ["com.iiot.flink.BatchFormatFactory"]
    assert classes
    assert (code.directory / "tools" / "build.py").is_file()
    assert (code.directory / "kda_sql" / "runner.py").is_file()
    # CodeBuild's folder: the staged code plus the connector Maven put in lib/.
    work = tmp_path / "app"
    shutil.copytree(code.directory, work)
    connector_factory = "org.apache.flink.connector.kinesis.table.KinesisDynamicTableFactory"
    with zipfile.ZipFile(work / "lib" / CONNECTOR_JAR, "w") as jar:
        jar.writestr(services, connector_factory + "\n")
        jar.writestr("org/apache/flink/connector/kinesis/Marker.class", b"\xca\xfe")
    subprocess.run(["bash", "-c", MERGE_JARS], cwd=work, check=True)
    assert sorted(p.name for p in (work / "lib").iterdir()) == [RULES_JAR]
    with zipfile.ZipFile(work / "lib" / RULES_JAR) as jar:
        assert jar.read(services).decode().split() == [connector_factory, *decoder_factories]
        names = set(jar.namelist())
    assert set(classes) | {"org/apache/flink/connector/kinesis/Marker.class"} <= names


@pytest.mark.parametrize(
    ("concern", "function"), [("alerting", "alert_router"), ("timeseries", "influx_writer")]
)
def test_functions_bundle_their_package_the_shared_code_and_the_core(
    synth: Synth, concern: str, function: str
) -> None:
    (body,) = [
        body
        for body in resources(synth, "dev", concern, "AWS::Lambda::Function").values()
        if body["Properties"].get("Handler") == f"lambdas.{function}.handler.handler"
    ]
    key = body["Properties"]["Code"]["S3Key"]
    bundle = synth.outdir / f"asset.{key.removesuffix('.zip')}"
    for path in (
        f"lambdas/{function}/handler.py",
        "lambdas/shared/dead_letter.py",
        "iiot/contract.py",
        "config/metrics.yaml",
    ):
        assert (bundle / path).is_file(), path


# --- functions in a VPC --------------------------------------------------------------------


def _allows(statement: dict[str, Any], action: str) -> bool:
    actions = statement.get("Action", [])
    actions = [actions] if isinstance(actions, str) else actions
    return statement.get("Effect") == "Allow" and action in actions


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_every_function_in_a_vpc_may_create_its_network_interfaces(synth: Synth, env: str) -> None:
    # Lambda's CreateFunction refuses a VPC function whose role cannot create network
    # interfaces, and CDK grants that only to roles it makes itself (PythonFunction and the
    # handlers bring their own).
    checked = 0
    for (name, concern), stack in synth.templates.items():
        if name != env:
            continue
        body = stack["Resources"]
        for function_id, function in body.items():
            props = function["Properties"] if function["Type"] == "AWS::Lambda::Function" else {}
            if "VpcConfig" not in props:
                continue
            role_id = props["Role"]["Fn::GetAtt"][0]
            managed = json.dumps(body[role_id]["Properties"].get("ManagedPolicyArns", []))
            granted = [
                statement
                for policy in body.values()
                if policy["Type"] == "AWS::IAM::Policy"
                and {"Ref": role_id} in policy["Properties"].get("Roles", [])
                for statement in policy["Properties"]["PolicyDocument"]["Statement"]
            ]
            assert "AWSLambdaVPCAccessExecutionRole" in managed or any(
                _allows(statement, "ec2:CreateNetworkInterface") for statement in granted
            ), f"{concern}: {function_id} runs in a VPC but its role cannot create interfaces"
            checked += 1
    assert checked >= 4  # the InfluxDB writer, retention, Grafana's handlers, the smoke probe
