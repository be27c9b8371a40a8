"""The post-deploy smoke tests' stack (stacks/smoke_stack.py): the InfluxDB probe in the
environment's VPC with a network path to InfluxDB's port and nothing else, the exact grants of
the probe's and the smoke role, the outputs `iiot smoke` reads, cdk-nag clean."""

from __future__ import annotations

import json
from typing import Any

import pytest

from config.environments import environments
from local_platform.smoke import OPTIONAL_OUTPUT_KEYS, OUTPUT_KEYS
from stacks.smoke_stack import OUTPUTS
from stacks.timeseries_stack import INFLUX_PORT
from tests.infra.conftest import Synth

ENVS = ("dev", "staging", "prod")


def _of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in template["Resources"].items() if v["Type"] == kind}


def _logical(template: dict[str, Any], kind: str, prefix: str) -> str:
    (name,) = [k for k in _of_type(template, kind) if k.startswith(prefix)]
    return name


def _export_of(template: dict[str, Any], logical_id: str, attribute: str | None = None) -> str:
    """The export name under which a stack outputs its resource's Ref or attribute."""
    wanted = {"Ref": logical_id} if attribute is None else {"Fn::GetAtt": [logical_id, attribute]}
    (name,) = [
        output["Export"]["Name"]
        for output in template.get("Outputs", {}).values()
        if output["Value"] == wanted and "Export" in output
    ]
    return str(name)


def _statements(template: dict[str, Any], role_prefix: str) -> list[dict[str, Any]]:
    role = _logical(template, "AWS::IAM::Role", role_prefix)
    return [
        statement
        for policy in _of_type(template, "AWS::IAM::Policy").values()
        if {"Ref": role} in policy["Roles"]
        for statement in policy["PolicyDocument"]["Statement"]
    ]


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


@pytest.mark.parametrize("env", ENVS)
def test_the_probe_runs_in_the_data_subnets_with_its_own_security_group(
    synth: Synth, env: str
) -> None:
    smoke = synth.template(env, "smoke")
    network = synth.template(env, "network")
    probe_id = _logical(smoke, "AWS::Lambda::Function", "InfluxProbe")
    probe = _of_type(smoke, "AWS::Lambda::Function")[probe_id]
    assert probe["Handler"] == "lambdas.smoke_probe.handler.handler"
    group_id = _logical(smoke, "AWS::EC2::SecurityGroup", "ProbeSecurityGroup")
    assert probe["VpcConfig"]["SecurityGroupIds"] == [{"Fn::GetAtt": [group_id, "GroupId"]}]
    # The same subnets as the InfluxDB writer: the network stack's data subnets.
    data_subnets = [k for k in _of_type(network, "AWS::EC2::Subnet") if "data" in k.lower()]
    assert data_subnets
    assert probe["VpcConfig"]["SubnetIds"] == [
        {"Fn::ImportValue": _export_of(network, subnet)} for subnet in data_subnets
    ]
    timeseries = synth.template(env, "timeseries")
    secret = _logical(timeseries, "AWS::SecretsManager::Secret", "InfluxCredentials")
    variables = probe["Environment"]["Variables"]
    assert variables["INFLUXDB_SECRET_ARN"] == {"Fn::ImportValue": _export_of(timeseries, secret)}
    instance = _logical(timeseries, "AWS::Timestream::InfluxDBInstance", "Influx")
    assert variables["INFLUXDB_URL"] == {
        "Fn::Join": [
            "",
            [
                "https://",
                {"Fn::ImportValue": _export_of(timeseries, instance, "Endpoint")},
                f":{INFLUX_PORT}",
            ],
        ]
    }


@pytest.mark.parametrize("env", ENVS)
def test_the_probe_reaches_influxdbs_port_and_the_api_endpoints_only(
    synth: Synth, env: str
) -> None:
    smoke = synth.template(env, "smoke")
    timeseries = synth.template(env, "timeseries")
    group_id = _logical(smoke, "AWS::EC2::SecurityGroup", "ProbeSecurityGroup")
    group_ref = {"Fn::GetAtt": [group_id, "GroupId"]}
    # InfluxDB's security group: the one the instance sits in.
    influx_group = _logical(timeseries, "AWS::EC2::SecurityGroup", "InfluxSecurityGroup")
    (instance,) = _of_type(timeseries, "AWS::Timestream::InfluxDBInstance").values()
    assert instance["VpcSecurityGroupIds"] == [{"Fn::GetAtt": [influx_group, "GroupId"]}]
    assert instance["Port"] == INFLUX_PORT
    influx_ref = {"Fn::ImportValue": _export_of(timeseries, influx_group, "GroupId")}

    group = _of_type(smoke, "AWS::EC2::SecurityGroup")[group_id]
    cidr = environments()[env].vpc_cidr
    assert [(r["CidrIp"], r["FromPort"], r["ToPort"]) for r in group["SecurityGroupEgress"]] == [
        (cidr, 443, 443)
    ]
    egress = [
        (r["DestinationSecurityGroupId"], r["IpProtocol"], r["FromPort"], r["ToPort"])
        for r in _of_type(smoke, "AWS::EC2::SecurityGroupEgress").values()
        if r["GroupId"] == group_ref
    ]
    assert egress == [(influx_ref, "tcp", INFLUX_PORT, INFLUX_PORT)]
    # InfluxDB admits the probe: the ingress rule is in this stack (the time-series stack
    # references no smoke resource, so the stacks deploy without a cycle).
    ingress = [
        (r["GroupId"], r["SourceSecurityGroupId"], r["IpProtocol"], r["FromPort"], r["ToPort"])
        for r in _of_type(smoke, "AWS::EC2::SecurityGroupIngress").values()
    ]
    assert ingress == [(influx_ref, group_ref, "tcp", INFLUX_PORT, INFLUX_PORT)]
    assert "smoke" not in json.dumps(timeseries["Resources"])


@pytest.mark.parametrize("env", ENVS)
def test_the_smoke_role_may_invoke_the_probe_and_no_other_function(synth: Synth, env: str) -> None:
    smoke = synth.template(env, "smoke")
    probe_id = _logical(smoke, "AWS::Lambda::Function", "InfluxProbe")
    statements = _statements(smoke, "SmokeRole")
    lambda_statements = [s for s in statements if any(a.startswith("lambda:") for a in _actions(s))]
    assert lambda_statements == [
        {
            "Action": "lambda:InvokeFunction",
            "Effect": "Allow",
            "Resource": {"Fn::GetAtt": [probe_id, "Arn"]},
        }
    ]
    # Every action the role has, exactly.
    actions = sorted(a for s in statements for a in _actions(s))
    assert actions == sorted(
        [
            "lambda:InvokeFunction",
            "iot:DescribeEndpoint",
            "iot:Connect",
            "iot:Publish",
            "states:StartExecution",
            "states:DescribeExecution",
            "s3:GetObject",
            "s3:ListBucket",
            "kms:Decrypt",
            "sagemaker:StartPipelineExecution",
            "sagemaker:DescribePipelineExecution",
            "secretsmanager:GetSecretValue",
        ]
    )
    rendered = {a: json.dumps(s["Resource"]) for s in statements for a in _actions(s)}
    # The resources end in their names (not at `:client`, `:topic`, `:execution`).
    assert rendered["iot:Connect"].endswith(f':client/iiot-{env}-smoke-*"]]}}')
    assert rendered["iot:Publish"].endswith(f'topic/iiot/{env}/factory/factory-01/sensor/data"]]}}')
    assert rendered["states:DescribeExecution"].endswith(':*"]]}')
    assert ":execution:" in rendered["states:DescribeExecution"]
    assert (
        f"pipeline/iiot-{env}-failure-model/execution/*"
        in rendered["sagemaker:DescribePipelineExecution"]
    )


@pytest.mark.parametrize("env", ENVS)
def test_the_probe_may_read_the_writers_secret_and_nothing_else(synth: Synth, env: str) -> None:
    smoke = synth.template(env, "smoke")
    timeseries = synth.template(env, "timeseries")
    statements = _statements(smoke, "InfluxProbe")
    by_action = {a: s["Resource"] for s in statements for a in _actions(s)}
    secret = _logical(timeseries, "AWS::SecretsManager::Secret", "InfluxCredentials")
    key = _logical(timeseries, "AWS::KMS::Key", "TimeSeriesKey")
    logs = _logical(smoke, "AWS::Logs::LogGroup", "InfluxProbeLogs")
    assert by_action == {
        "secretsmanager:GetSecretValue": {"Fn::ImportValue": _export_of(timeseries, secret)},
        "kms:Decrypt": {"Fn::ImportValue": _export_of(timeseries, key, "Arn")},
        "logs:CreateLogStream": {"Fn::GetAtt": [logs, "Arn"]},
        "logs:PutLogEvents": {"Fn::GetAtt": [logs, "Arn"]},
        "xray:PutTelemetryRecords": "*",
        "xray:PutTraceSegments": "*",
        "ec2:CreateNetworkInterface": "*",
        "ec2:DescribeNetworkInterfaces": "*",
        "ec2:DeleteNetworkInterface": "*",
        "ec2:AssignPrivateIpAddresses": "*",
        "ec2:UnassignPrivateIpAddresses": "*",
    }
    role = _logical(smoke, "AWS::IAM::Role", "InfluxProbeRole")
    assert "ManagedPolicyArns" not in smoke["Resources"][role]["Properties"]


def test_the_outputs_name_the_probe_and_iiot_smoke_reads_them(synth: Synth) -> None:
    smoke = synth.template("dev", "smoke")
    probe_id = _logical(smoke, "AWS::Lambda::Function", "InfluxProbe")
    assert smoke["Outputs"]["SmokeInfluxProbe"]["Value"] == {"Ref": probe_id}
    assert OUTPUTS == {**OUTPUT_KEYS, **OPTIONAL_OUTPUT_KEYS}


def test_the_smoke_stacks_are_cdk_nag_clean(synth: Synth) -> None:
    report = synth.validation_report() or {"pluginReports": []}
    findings = [
        construct["constructPath"]
        for plugin in report["pluginReports"]
        for violation in plugin["violations"]
        for construct in violation["violatingConstructs"]
        if "/smoke/" in construct["constructPath"]
    ]
    assert findings == []


def test_the_probe_bundles_its_package_and_the_shared_query(synth: Synth) -> None:
    smoke = synth.template("dev", "smoke")
    probe_id = _logical(smoke, "AWS::Lambda::Function", "InfluxProbe")
    key = _of_type(smoke, "AWS::Lambda::Function")[probe_id]["Code"]["S3Key"]
    bundle = synth.outdir / f"asset.{key.removesuffix('.zip')}"
    for path in ("lambdas/smoke_probe/handler.py", "lambdas/smoke_probe/influx.py"):
        assert (bundle / path).is_file(), path
