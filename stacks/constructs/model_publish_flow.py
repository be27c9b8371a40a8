"""The flow that turns an approved model package into a new version of its model component.

Two models ship to the gateways as data-only components, each published by one instance of this
construct (`PublishedModel`: FAILURE_MODEL, ANOMALY_MODEL). Approving a model package of the
model's registry group starts a state machine that describes the package, runs a CodeBuild
project that publishes the pipeline's zip as component version `1.0.<package version>` of the
environment's component (`com.iiot.<env>.FailureModel`, `com.iiot.<env>.AnomalyModel`:
component versions are account-wide), and notifies the ML topic (one topic for both). The
build's source is a zip of the component's recipe.yaml and ml_pipeline/publish_component.py
(the script that writes the new version's recipe; tested in tests/ml). Deploying the version to
the gateways stays a reviewed change: the environment's `edge_model_version` or
`edge_anomaly_model_version` (config/environments.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from config.environments import Environment
from stacks import artifacts
from stacks.constructs.access import acknowledge, bucket_name, grant_bucket
from stacks.constructs.python_bundle import (
    BUNDLE_CACHE,
    LocalPythonBundling,
    source_hash,
    staged_once,
)
from stacks.constructs.python_function import log_retention

# A model package version N is published as component version 1.0.N.
VERSION_PREFIX = "1.0."


@dataclass(frozen=True, kw_only=True)
class PublishedModel:
    """A model component the ML stack publishes after an approval.

    `component`: the component's local name (its folder under edge_components/); `artifact`:
    the zip each version carries; `locate`: shell commands run first in the build, then
    `source`: the approved package's zip as a shell word (both from $MODEL_DATA_URL, the
    package's ModelDataUrl); `setting`: the environment setting that deploys a version;
    `what`: the model in prose (the approval rule's description); `summary`: the publish
    project's description.
    """

    component: str
    artifact: str
    locate: tuple[str, ...]
    source: str
    setting: str
    what: str
    summary: str

    @property
    def short_name(self) -> str:
        return self.component.rsplit(".", 1)[-1]

    @property
    def published_prefix(self) -> str:
        """Where the published versions' zips live in the artifacts bucket (the gateways
        read them)."""
        return f"greengrass/{self.component}/"


# Each package publishes its own run's model, also when an older package is approved after a
# newer pipeline run: every run writes under its own folder, `<output>` below =
# `<OutputS3Uri>/<pipeline execution id>` (ml_pipeline/sagemaker_pipeline.py), and the zip is
# found from the package's ModelDataUrl, never from a fixed path.
#
# The failure model: the package's ModelDataUrl is the training job's model.tar.gz
# (`<output>/model/<job>/output/model.tar.gz`); the same run's compile step wrote the gateways'
# zip to `<output>/component/failure_model.zip`.
FAILURE_MODEL = PublishedModel(
    component="com.iiot.FailureModel",
    artifact="failure_model.zip",
    locate=('OUTPUT="${MODEL_DATA_URL%%/model/*}"',),
    source='"${OUTPUT}/component/failure_model.zip"',
    setting="edge_model_version",
    what="failure model",
    summary="Publishes an approved, compiled model as a FailureModel component",
)
# The anomaly detector: the package's ModelDataUrl is the zip itself
# (`<output>/anomaly/anomaly_model.zip`, RegisterAnomalyModel).
ANOMALY_MODEL = PublishedModel(
    component="com.iiot.AnomalyModel",
    artifact="anomaly_model.zip",
    locate=(),
    source='"${MODEL_DATA_URL}"',
    setting="edge_anomaly_model_version",
    what="anomaly model",
    summary="Publishes an approved anomaly model as an AnomalyModel component",
)
PUBLISHED_MODELS = (FAILURE_MODEL, ANOMALY_MODEL)


def publish_buildspec(model: PublishedModel) -> dict[str, Any]:
    """CodeBuild: copy the pipeline's zip next to the other published versions, write the
    version's recipe with the repository's script and register it."""
    return {
        "version": "0.2",
        "phases": {
            "install": {"commands": ["pip3 install --quiet pyyaml"]},
            "build": {
                "commands": [
                    *model.locate,
                    f'VERSION="{VERSION_PREFIX}${{MODEL_PACKAGE_VERSION}}"',
                    f'TARGET="s3://${{ARTIFACT_BUCKET}}/{model.published_prefix}${{VERSION}}/'
                    f'{model.artifact}"',
                    f'aws s3 cp {model.source} "${{TARGET}}"',
                    'python3 publish_component.py --recipe recipe.yaml --version "${VERSION}" '
                    '--model-package-version "${MODEL_PACKAGE_VERSION}" --artifact "${TARGET}" '
                    '--component-name "${COMPONENT_NAME}" --out recipe.json',
                    "aws greengrassv2 create-component-version --inline-recipe fileb://recipe.json",
                ]
            },
        },
    }


def stage_source(model: PublishedModel = FAILURE_MODEL) -> str:
    """The build's source folder (staged once under cdk.out): the model component's recipe and
    the publish script, side by side as the buildspec expects them."""
    recipe = artifacts.COMPONENTS[model.component].require()
    script = artifacts.MODEL_PUBLISHER.require()
    copies = [(recipe, ""), (script, "")]
    bundling = LocalPythonBundling(copies=copies, requirements=[], platform="", python_version="")
    folder = BUNDLE_CACHE / f"model-publish-{source_hash(copies, [])[:24]}"
    return str(staged_once(folder, bundling.bundle))


class ModelPublishFlow(Construct):
    """Approval -> describe the model package -> publish the component version -> notify.

    Publishes `model` (default: the failure model) from the packages of `group_name`. Exposes
    `key` (encrypts the topic), `topic` (published versions are announced here), `project`
    (the CodeBuild publish job), `state_machine` and `rule` (the approval trigger). Given a
    `topic` and its `key` (another flow's), it announces there instead of creating its own.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        group_name: str,
        artifacts_key: kms.IKey,
        model: PublishedModel = FAILURE_MODEL,
        topic: sns.ITopic | None = None,
        key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if (topic is None) != (key is None):
            raise ValueError("a shared topic comes with the key that encrypts it")
        prefix = env_config.prefix
        self.model = model
        self.component_name = env_config.component_name(model.component)
        if topic is not None and key is not None:
            self.key: kms.IKey = key
            self.topic: sns.ITopic = topic
        else:
            self.key, self.topic = self._topic(prefix)
        source = s3_assets.Asset(self, "PublishSource", path=stage_source(model))
        self.project = codebuild.Project(
            self,
            "PublishModel",
            description=model.summary,
            source=codebuild.Source.s3(bucket=source.bucket, path=source.s3_object_key),
            build_spec=codebuild.BuildSpec.from_object(publish_buildspec(model)),
            environment=codebuild.BuildEnvironment(
                build_image=codebuild.LinuxBuildImage.STANDARD_7_0,
                compute_type=codebuild.ComputeType.SMALL,
            ),
            environment_variables={
                "ARTIFACT_BUCKET": codebuild.BuildEnvironmentVariable(
                    value=bucket_name(prefix, "artifacts")
                ),
                "COMPONENT_NAME": codebuild.BuildEnvironmentVariable(value=self.component_name),
            },
            encryption_key=artifacts_key,
            timeout=Duration.minutes(15),
            logging=codebuild.LoggingOptions(
                cloud_watch=codebuild.CloudWatchLoggingOptions(
                    log_group=logs.LogGroup(
                        self,
                        "PublishLogs",
                        retention=log_retention(env_config.log_retention_days),
                        removal_policy=RemovalPolicy.DESTROY,
                    )
                )
            ),
        )
        self._grant_publishing(prefix, artifacts_key)
        self.state_machine = self._flow(env_config, group_name)
        self.rule = events.Rule(
            self,
            "OnApproval",
            description=f"An approved {model.what} starts the publish flow",
            event_pattern=events.EventPattern(
                source=["aws.sagemaker"],
                detail_type=["SageMaker Model Package State Change"],
                detail={
                    "ModelPackageGroupName": [group_name],
                    "ModelApprovalStatus": ["Approved"],
                },
            ),
            targets=[targets.SfnStateMachine(self.state_machine)],
        )

    def _topic(self, prefix: str) -> tuple[kms.Key, sns.Topic]:
        """The ML notifications topic and its key (one per environment)."""
        key = kms.Key(
            self,
            "MlKey",
            alias=f"alias/{prefix}-ml",
            description="Encrypts the ML notifications topic",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
        )
        topic = sns.Topic(
            self,
            "ModelTopic",
            topic_name=f"{prefix}-ml-models",
            display_name="IIoT models published for the gateways",
            master_key=key,
            enforce_ssl=True,
        )
        return key, topic

    def _grant_publishing(self, prefix: str, artifacts_key: kms.IKey) -> None:
        stack = Stack.of(self)
        project = self.project
        assert project.role is not None
        grant_bucket(
            project.role, project.role, prefix=prefix, layer="artifacts", path="ml/",
            write=False, key=artifacts_key, why="the build reads the pipeline's compiled zip",
        )  # fmt: skip
        grant_bucket(
            project.role, project.role, prefix=prefix, layer="artifacts",
            path=self.model.published_prefix, write=True, key=artifacts_key,
            why="the build stores each published model version",
        )  # fmt: skip
        project.add_to_role_policy(
            iam.PolicyStatement(
                actions=["greengrass:CreateComponentVersion"],
                resources=[
                    stack.format_arn(
                        service="greengrass",
                        resource="components",
                        resource_name=name,
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                    for name in (self.component_name, f"{self.component_name}:versions:*")
                ],
            )
        )
        project_id = stack.resolve(stack.get_logical_id(project.node.default_child))  # type: ignore[arg-type]
        acknowledge(
            project,
            "CDK's CodeBuild grants: reading the source zip from the CDK asset bucket "
            "(s3:GetObject*/GetBucket*/List*), the build's own log group and report groups "
            "(named per build at run time), and envelope encryption with the lake key.",
            "AwsSolutions-IAM5[Action::s3:GetObject*]",
            "AwsSolutions-IAM5[Action::s3:GetBucket*]",
            "AwsSolutions-IAM5[Action::s3:List*]",
            "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
            "AwsSolutions-IAM5[Action::kms:ReEncrypt*]",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:"
            f"<AWS::AccountId>:log-group:/aws/codebuild/<{project_id}>:*]",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:codebuild:<AWS::Region>:"
            f"<AWS::AccountId>:report-group/<{project_id}>-*]",
        )
        acknowledge(
            project,
            "Each approval publishes a new, numbered version of this one component; CodeBuild "
            "also names its log streams and report groups per build at run time.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:greengrass:<AWS::Region>:"
            f"<AWS::AccountId>:components:{self.component_name}:versions:*]",
        )

    def _flow(self, env_config: Environment, group_name: str) -> sfn.StateMachine:
        stack = Stack.of(self)
        model_packages = stack.format_arn(
            service="sagemaker", resource="model-package", resource_name=f"{group_name}/*"
        )
        describe = tasks.CallAwsService(
            self,
            "DescribeModelPackage",
            service="sagemaker",
            action="describeModelPackage",
            parameters={"ModelPackageName": sfn.JsonPath.string_at("$.detail.ModelPackageArn")},
            iam_resources=[model_packages],
            result_selector={
                "modelDataUrl": sfn.JsonPath.string_at(
                    "$.InferenceSpecification.Containers[0].ModelDataUrl"
                ),
                "version": sfn.JsonPath.number_at("$.ModelPackageVersion"),
            },
            result_path="$.model",
        )
        publish = tasks.CodeBuildStartBuild(
            self,
            "PublishComponent",
            project=self.project,
            integration_pattern=sfn.IntegrationPattern.RUN_JOB,
            environment_variables_override={
                "MODEL_DATA_URL": codebuild.BuildEnvironmentVariable(
                    value=sfn.JsonPath.string_at("$.model.modelDataUrl")
                ),
                "MODEL_PACKAGE_VERSION": codebuild.BuildEnvironmentVariable(
                    value=sfn.JsonPath.format("{}", sfn.JsonPath.string_at("$.model.version"))
                ),
            },
            result_path=sfn.JsonPath.DISCARD,
        )
        notify = tasks.SnsPublish(
            self,
            "Notify",
            topic=self.topic,
            subject=f"{self.model.short_name} published",
            message=sfn.TaskInput.from_text(
                sfn.JsonPath.format(
                    f"{self.component_name} {VERSION_PREFIX}{{}} is published. Deploy it to the "
                    f"gateways: npx cdk deploy -c {env_config.name}:{self.model.setting}="
                    f"{VERSION_PREFIX}{{}} {env_config.prefix}/edge (keep the other model "
                    "pinned: edge_model_version and edge_anomaly_model_version roll out together)",
                    sfn.JsonPath.string_at("$.model.version"),
                    sfn.JsonPath.string_at("$.model.version"),
                )
            ),
        )
        flow_logs = logs.LogGroup(
            self,
            "PublishFlowLogs",
            retention=log_retention(env_config.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        state_machine = sfn.StateMachine(
            self,
            "PublishFlow",
            definition_body=sfn.DefinitionBody.from_chainable(describe.next(publish).next(notify)),
            timeout=Duration.hours(1),
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=flow_logs, level=sfn.LogLevel.ALL),
        )
        # Publishing to the encrypted topic: SNS encrypts the message with the caller's
        # permission on the topic's key (the SnsPublish task grants only sns:Publish).
        self.key.grant(state_machine, "kms:GenerateDataKey", "kms:Decrypt")
        acknowledge(
            state_machine,
            "X-Ray and CloudWatch Logs vended-log delivery actions have no resource-level "
            "permissions; the .sync CodeBuild task manages its own EventBridge rule.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        acknowledge(
            state_machine,
            "The approved model package is a numbered version in this one group, known only "
            "from the approval event.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:"
            f"<AWS::AccountId>:model-package/{group_name}/*]",
        )
        return state_machine
