"""Environments deploy side by side and work on their first deploy (issue 14).

- Isolation: dev, staging and prod resolved into one account and region share no account-wide
  name (physical names, Greengrass component names, IoT topics and rule names, metric
  namespaces); each environment is a `cdk.Stage` pinned to its own account and region, and an
  unpinned staging or prod refuses to deploy.
- First deploy and teardown: what CloudFormation alone would get wrong (the InfluxDB log-bucket
  policy, fixed-name resources retained by default, prod's secrets deleted under a retained
  instance, a Flink application nobody starts, floating base images).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from config.environments import SUPPORTED_REGIONS, environments
from stacks.artifacts import ROOT
from tests.infra.conftest import ENVIRONMENTS, Synth
from tests.infra.harness.model import NAME_PROPERTY, Cloud, Resource


def cloud_of(synth: Synth, env: str) -> Cloud:
    """The environment's templates resolved into the harness's one account and region."""
    return Cloud.from_paths(
        {f"iiot-{name}-{concern}": path for (name, concern), path in synth.template_paths.items()
         if name == env}
    )  # fmt: skip


def _named(cloud: Cloud, resource: Resource) -> bool:
    """Whether the template gives the resource its physical name (else CloudFormation makes a
    unique one)."""
    value: Any = resource.properties
    for part in NAME_PROPERTY[resource.type].split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value is not None


def account_wide_names(cloud: Cloud) -> Iterator[tuple[str, str]]:
    """(kind, name) of everything one environment names in its account and region."""
    for stack in cloud.templates:
        yield "AWS::CloudFormation::Stack", stack
    for resource in cloud.resources():
        props = resource.properties
        if resource.type == "AWS::Glue::Table":  # named within its database
            database = cloud.resolve(resource.stack, props["DatabaseName"])
            yield resource.type, f"{database}.{cloud.name(resource)}"
        elif resource.type in NAME_PROPERTY and _named(cloud, resource):
            yield resource.type, cloud.name(resource)
        if resource.type == "AWS::GreengrassV2::ComponentVersion":
            recipe = json.loads(cloud.resolve(resource.stack, props["InlineRecipe"]))
            yield "greengrass component", recipe["ComponentName"]
        elif resource.type == "AWS::GreengrassV2::Deployment":
            for name in props["Components"]:
                if name.startswith("com.iiot."):
                    yield "greengrass component", name
        elif resource.type == "AWS::IoT::TopicRule":
            sql = cloud.resolve(resource.stack, props["TopicRulePayload"]["Sql"])
            yield "iot topic", re.search(r"FROM '([^']+)'", sql).group(1)  # type: ignore[union-attr]
            for action in props["TopicRulePayload"]["Actions"]:
                if "CloudwatchMetric" in action:
                    yield "metric namespace", action["CloudwatchMetric"]["MetricNamespace"]
        elif resource.type == "AWS::Lambda::Function":
            variables = props.get("Environment", {}).get("Variables", {})
            if "POWERTOOLS_METRICS_NAMESPACE" in variables:
                yield "metric namespace", variables["POWERTOOLS_METRICS_NAMESPACE"]
        for output in cloud.templates[resource.stack].get("Outputs", {}).values():
            if "Export" in output:
                yield "export", cloud.resolve(resource.stack, output["Export"]["Name"])


def test_three_environments_in_one_account_share_no_account_wide_name(synth: Synth) -> None:
    names = {env: set(account_wide_names(cloud_of(synth, env))) for env in ENVIRONMENTS}
    kinds = {kind for found in names.values() for kind, _ in found}
    # The check covers what collides in one account: names of every kind, not only stacks.
    assert {
        "AWS::S3::Bucket",
        "AWS::Kinesis::Stream",
        "AWS::IoT::TopicRule",
        "AWS::IoT::Policy",
        "greengrass component",
        "iot topic",
        "metric namespace",
        "AWS::SageMaker::ModelPackageGroup",
    } <= kinds, kinds
    for index, first in enumerate(ENVIRONMENTS):
        for second in ENVIRONMENTS[index + 1 :]:
            shared = names[first] & names[second]
            assert not shared, f"{first} and {second} both name: {sorted(shared)}"


def test_every_environment_is_a_stage_pinned_to_its_account(synth: Synth) -> None:
    manifest = json.loads((synth.outdir / "manifest.json").read_text())
    stages = {
        artifact["properties"]["displayName"] for artifact in manifest["artifacts"].values()
        if artifact["type"] == "cdk:cloud-assembly"
    }  # fmt: skip
    assert stages == {f"iiot-{env}" for env in ENVIRONMENTS}


def test_a_pinned_environment_deploys_to_its_account_and_region() -> None:
    import aws_cdk as cdk

    from stacks.environment_stacks import environment_stage

    env = environments({"prod:account": "210987654321", "prod:region": "eu-central-1"})["prod"]
    stage = environment_stage(cdk.App(), env)
    stack = cdk.Stack(stage, "probe")
    assert (stack.account, stack.region) == ("210987654321", "eu-central-1")
    # Unpinned, the stage is environment-agnostic: never the CLI profile's account.
    unpinned = environment_stage(cdk.App(), environments()["prod"])
    assert cdk.Token.is_unresolved(cdk.Stack(unpinned, "probe").account)


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_an_unpinned_environment_refuses_to_deploy(synth: Synth, env: str) -> None:
    for (name, concern), template in synth.templates.items():
        if name != env:
            continue
        (assertion,) = template["Rules"]["EnvironmentIsPinned"]["Assertions"]
        assert f"{env}:account and {env}:region" in assertion["AssertDescription"], concern
        # Nothing but the missing pin can satisfy it: the parameter defaults to "no".
        assert template["Parameters"]["EnvironmentPinned"]["Default"] == "no"


def test_the_sandbox_deploys_anywhere(synth: Synth) -> None:
    for (name, _), template in synth.templates.items():
        if name == "dev":
            assert "EnvironmentPinned" not in template.get("Parameters", {})
            assert "EnvironmentIsPinned" not in template.get("Rules", {})


def test_supported_regions_are_listed_in_the_readme_and_deploy_guide() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for region in SUPPORTED_REGIONS:
        assert f"`{region}`" in guide, region
        assert region in readme, region


# --- first deploy and teardown ----------------------------------------------------------------


def _of_type(synth: Synth, env: str, kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (concern, body)
        for (name, concern), template in synth.templates.items()
        if name == env
        for body in template["Resources"].values()
        if body["Type"] == kind
    ]


@pytest.mark.parametrize(
    "kind",
    [
        "AWS::Kinesis::Stream",
        "AWS::Glue::Database",
        "AWS::Glue::Table",
        "AWS::SecretsManager::Secret",
        "AWS::Timestream::InfluxDBInstance",
    ],
)
def test_prod_keeps_data_keys_and_secrets_dev_deletes_them(synth: Synth, kind: str) -> None:
    for env, policy in (("prod", "Retain"), ("staging", "Delete"), ("dev", "Delete")):
        found = _of_type(synth, env, kind)
        assert found, (env, kind)
        for concern, body in found:
            if kind == "AWS::SecretsManager::Secret" and concern != "timeseries":
                continue
            assert body.get("DeletionPolicy") == policy, (env, concern, kind)


def test_prod_keeps_the_key_of_the_influxdb_secret(synth: Synth) -> None:
    for env, policy in (("prod", "Retain"), ("dev", "Delete")):
        template = synth.template(env, "timeseries")
        (secret,) = [
            body for body in template["Resources"].values()
            if body["Type"] == "AWS::SecretsManager::Secret"
        ]  # fmt: skip
        key_id = secret["Properties"]["KmsKeyId"]["Fn::GetAtt"][0]
        assert template["Resources"][key_id]["DeletionPolicy"] == policy, env


def test_timestream_may_write_its_logs_before_the_instance_exists(synth: Synth) -> None:
    lake = synth.template("dev", "lake")["Resources"]
    policies = [b for b in lake.values() if b["Type"] == "AWS::S3::BucketPolicy"]
    grants = [
        statement
        for policy in policies
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement.get("Principal", {}).get("Service") == "timestream-influxdb.amazonaws.com"
    ]
    (grant,) = grants
    assert grant["Effect"] == "Allow"
    assert grant["Action"] == "s3:PutObject"
    cloud = cloud_of(synth, "dev")
    (instance,) = cloud.resources("AWS::Timestream::InfluxDBInstance")
    delivery = cloud.resolve(instance.stack, instance.properties["LogDeliveryConfiguration"])
    assert delivery["S3Configuration"]["Enabled"] is True
    (bucket,) = [
        b for b in cloud.resources("AWS::S3::Bucket")
        if cloud.name(b) == delivery["S3Configuration"]["BucketName"]
    ]  # fmt: skip
    (policy,) = [
        p for p in cloud.resources("AWS::S3::BucketPolicy")
        if cloud.resolve(p.stack, p.properties["Bucket"]) == cloud.name(bucket)
        and "timestream-influxdb" in json.dumps(p.properties)
    ]  # fmt: skip
    resolved = json.dumps(cloud.resolve(policy.stack, grant["Resource"]))
    assert cloud.name(bucket) in resolved


def test_the_flink_application_is_started_after_each_deploy(synth: Synth) -> None:
    streaming = synth.template("dev", "streaming")["Resources"]
    (application_id,) = [
        name for name, body in streaming.items()
        if body["Type"] == "AWS::KinesisAnalyticsV2::Application"
    ]  # fmt: skip
    starters = [b for b in streaming.values() if b["Type"] == "Custom::AWS"]
    (starter,) = starters
    create = json.loads(starter["Properties"]["Create"])
    assert json.loads(starter["Properties"]["Update"]) == create
    assert (create["service"], create["action"]) == ("KinesisAnalyticsV2", "startApplication")
    assert create["ignoreErrorCodesMatching"] == "ResourceInUseException"
    # A new package restarts it: the physical id follows the package's key.
    assert "flink/" in create["physicalResourceId"]["id"]
    assert application_id in starter["DependsOn"]


def test_base_images_are_pinned_by_digest() -> None:
    for dockerfile in (
        ROOT / "ml_pipeline" / "container" / "Dockerfile",
        ROOT / "spark_jobs" / "container" / "Dockerfile",
    ):
        bases = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
        assert bases, dockerfile
        for base in bases:
            assert re.search(r"@(sha256:[0-9a-f]{64}|\$\{\w+\})$", base), (dockerfile, base)
            assert ":latest" not in base, base
