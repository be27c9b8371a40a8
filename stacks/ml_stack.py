"""Machine learning: the model registry (two SageMaker model package groups: the failure
model's and the anomaly detector's), the training pipeline from ml_pipeline/ with its role and
container image (built during deployment from ml_pipeline/container/Dockerfile), and the flows
that turn an approved model into a new com.iiot.FailureModel or com.iiot.AnomalyModel
component version for the gateways.

Flow: the pipeline trains, evaluates, registers the model (PendingManualApproval) and compiles
it for the gateways (TL2cgen, x86_64 + aarch64: `<OutputS3Uri>/<execution id>/component/
failure_model.zip`: every run in its own folder, so a package's files stay its own).
Approving the model package in the registry starts the publish flow
(stacks/constructs/model_publish_flow.py), which publishes the compiled zip as FailureModel
version `1.0.<package version>` and notifies the ML topic. Deploying it to the gateways is a
reviewed change: set the environment's model version (CDK context `<env>:edge_model_version`,
config/environments.py) and `cdk deploy` the edge stack.

The anomaly detector takes the same way with its own group: the pipeline's TrainAnomalyModel
step writes `anomaly_model.zip` and registers it (RegisterAnomalyModel, the zip is the
package's ModelDataUrl); approving it publishes AnomalyModel version `1.0.<package version>`
(a second instance of the publish flow, announcing on the same topic), and
`<env>:edge_anomaly_model_version` deploys it.

The pipeline runs without anyone starting it: on the environment's retraining schedule and,
where `retraining.on_new_silver` is set, after every successful lake run (new silver data).
Its parameters default to this environment's names (the definition in ml_pipeline/ is
account-neutral): the two model package groups, the lake's silver prefix as input and the
artifacts bucket's ml/ prefix as output. The execution role runs the pipeline's jobs
(CreateProcessingJob, CreateTrainingJob, their Describe and Stop), registers into the two
groups and passes itself to the jobs; tests/infra/test_runtime_permissions.py replays the
definition's steps against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aws_cdk import ArnFormat, Fn, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from config.environments import Environment
from stacks import artifacts
from stacks.artifacts import ROOT
from stacks.constructs.access import acknowledge, bucket_name, grant_bucket
from stacks.constructs.deploy_time_image import DeployTimeImage, stage_context
from stacks.constructs.model_publish_flow import (
    ANOMALY_MODEL,
    PUBLISHED_MODELS,
    ModelPublishFlow,
)
from stacks.constructs.python_bundle import project_requirements

ML_PYTHON = "3.11"  # the image's interpreter (ml_pipeline/container/Dockerfile)
# Where the pipeline reads (the lake) and writes (the artifacts bucket), as granted below.
SILVER_PREFIX = "silver/"
OUTPUT_PREFIX = "ml/"
# SageMaker Pipelines names the jobs it starts `pipelines-<execution id>-<step>-<suffix>`.
PIPELINE_JOBS = "pipelines-*"


def pipeline_defaults(definition: str, defaults: dict[str, str]) -> str:
    """The pipeline definition with these parameters' default values (they may hold
    `${AWS::AccountId}`-style references, which the stack's Fn::Sub resolves)."""
    parsed = json.loads(definition)
    names = {parameter["Name"] for parameter in parsed["Parameters"]}
    unknown = set(defaults) - names
    if unknown:
        raise ValueError(f"the pipeline definition has no parameters {sorted(unknown)}")
    for parameter in parsed["Parameters"]:
        if parameter["Name"] in defaults:
            parameter["DefaultValue"] = defaults[parameter["Name"]]
    return json.dumps(parsed, indent=1)


def ml_image_context() -> Path:
    """The pipeline image's build context: ml_pipeline/container/Dockerfile, the project's
    packages (the pipeline trains on edge_runtime's feature definition) and the core + `ml`
    dependencies for x86_64 Linux, Python 3.11."""
    packages = ("iiot", "edge_runtime", "ml_pipeline", "config")
    return stage_context(
        "ml",
        dockerfile=ROOT / "ml_pipeline" / "container" / "Dockerfile",
        copies=[(ROOT / package, "") for package in packages],
        requirements=project_requirements("ml"),
        architecture="x86_64",
        python_version=ML_PYTHON,
    )


class MlStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        lake_key: kms.IKey,
        token_exchange_role: iam.IRole,
        lake_run: sfn.IStateMachine,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        prefix = env_config.prefix
        self.group_name = f"{prefix}-failure-model"
        self.model_group = sagemaker.CfnModelPackageGroup(
            self,
            "ModelPackageGroup",
            model_package_group_name=self.group_name,
            model_package_group_description="Failure-prediction models for the gateways",
        )
        self.anomaly_group_name = f"{prefix}-anomaly-model"
        self.anomaly_group = sagemaker.CfnModelPackageGroup(
            self,
            "AnomalyModelPackageGroup",
            model_package_group_name=self.anomaly_group_name,
            model_package_group_description="Per-machine anomaly detectors for the gateways",
        )
        self.image = DeployTimeImage(
            self,
            "PlatformImage",
            repository_name=f"{prefix}-ml",
            context=ml_image_context(),
            architecture="x86_64",
            keep_images=env_config.keep_data_on_delete,
        )
        self.image_repository = self.image.repository
        self.execution_role = self._execution_role(prefix, lake_key)
        self.pipeline = self._pipeline(artifacts.ML_PIPELINE.require().read_text(), env_config)
        self.pipeline.add_resource_dependency(self.model_group)
        self.pipeline.add_resource_dependency(self.anomaly_group)
        self.retraining_rules = self._retraining(env_config, lake_run)
        # The id "Default" is left out of logical ids (CDK's makeUniqueId), so the flow's
        # resources keep the ids they had when this stack created them itself: an update does
        # not replace the named topic and key alias.
        self.publish_flow = ModelPublishFlow(
            self, "Default", env_config=env_config, group_name=self.group_name,
            artifacts_key=lake_key,
        )  # fmt: skip
        # The anomaly detector's approvals publish AnomalyModel versions; announced on the
        # same topic.
        self.anomaly_publish_flow = ModelPublishFlow(
            self, "AnomalyModelPublish", env_config=env_config,
            group_name=self.anomaly_group_name, artifacts_key=lake_key, model=ANOMALY_MODEL,
            topic=self.publish_flow.topic, key=self.publish_flow.key,
        )  # fmt: skip
        published = [
            f"{bucket_name(prefix, 'artifacts')}/{model.published_prefix}*"
            for model in PUBLISHED_MODELS
        ]
        # Gateways download published models with the token-exchange role.
        model_access = iam.Policy(
            self,
            "GatewayModelAccess",
            roles=[token_exchange_role],
            statements=[
                iam.PolicyStatement(
                    actions=["s3:GetObject"],
                    resources=[
                        self.format_arn(service="s3", region="", account="", resource=path)
                        for path in published
                    ],
                ),
                iam.PolicyStatement(actions=["kms:Decrypt"], resources=[lake_key.key_arn]),
            ],
        )
        acknowledge(
            model_access,
            "Gateways fetch the FailureModel and AnomalyModel versions published after each "
            "approval; their keys (one folder per version) exist only at run time. Read-only, "
            "one prefix per model component.",
            *(
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::"
                f"{prefix}-artifacts-<AWS::AccountId>-<AWS::Region>/{model.published_prefix}*]"
                for model in PUBLISHED_MODELS
            ),
        )

    def _execution_role(self, prefix: str, lake_key: kms.IKey) -> iam.Role:
        role = iam.Role(
            self,
            "PipelineExecutionRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="SageMaker pipeline jobs: read silver, write ml/ artifacts, register",
        )
        grant_bucket(
            role, role, prefix=prefix, layer="lake", path="silver/", write=False, key=lake_key,
            why="the features job reads the silver readings",
        )  # fmt: skip
        grant_bucket(
            role, role, prefix=prefix, layer="artifacts", path="ml/", write=True, key=lake_key,
            why="pipeline jobs write features, models, evaluations and compiled components",
        )  # fmt: skip
        self.image_repository.grant_pull(role)
        groups = (self.group_name, self.anomaly_group_name)
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["sagemaker:CreateModelPackage", "sagemaker:DescribeModelPackage"],
                resources=[
                    arn
                    for group in groups
                    for arn in (
                        self.format_arn(
                            service="sagemaker",
                            resource="model-package",
                            resource_name=f"{group}/*",
                        ),
                        self.format_arn(
                            service="sagemaker", resource="model-package-group", resource_name=group
                        ),
                    )
                ],
            )
        )
        # The pipeline runs its steps as jobs under this same role.
        role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "sagemaker:CreateProcessingJob",
                    "sagemaker:DescribeProcessingJob",
                    "sagemaker:StopProcessingJob",
                    "sagemaker:CreateTrainingJob",
                    "sagemaker:DescribeTrainingJob",
                    "sagemaker:StopTrainingJob",
                    "sagemaker:AddTags",
                ],
                resources=[
                    self.format_arn(service="sagemaker", resource=kind, resource_name=PIPELINE_JOBS)
                    for kind in ("processing-job", "training-job")
                ],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[
                    self.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name="/aws/sagemaker/*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["cloudwatch:PutMetricData", "ecr:GetAuthorizationToken"],
                resources=["*"],
            )
        )
        acknowledge(
            role,
            "ecr:GetAuthorizationToken and cloudwatch:PutMetricData (job metrics) have no "
            "resource-level permissions.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        acknowledge(
            role,
            "SageMaker names each job's log group and stream at run time under /aws/sagemaker/.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:"
            "<AWS::AccountId>:log-group:/aws/sagemaker/*]",
        )
        acknowledge(
            role,
            "Registering creates numbered model package versions in the environment's two groups.",
            *(
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:"
                f"<AWS::AccountId>:model-package/{group}/*]"
                for group in groups
            ),
        )
        acknowledge(
            role,
            "SageMaker Pipelines names each job it starts per execution "
            f"({PIPELINE_JOBS}); the role may run, describe, stop and tag only those.",
            *(
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:"
                f"<AWS::AccountId>:{kind}/{PIPELINE_JOBS}]"
                for kind in ("processing-job", "training-job")
            ),
        )
        return role

    def _pipeline(self, definition: str, env_config: Environment) -> sagemaker.CfnPipeline:
        # The buckets' names (stacks/constructs/access.py: bucket_name) as Fn::Sub references.
        bucket = "s3://" + env_config.prefix + "-{}-${{AWS::AccountId}}-${{AWS::Region}}/"
        definition = pipeline_defaults(
            definition,
            {
                "ModelPackageGroupName": self.group_name,
                "AnomalyModelPackageGroupName": self.anomaly_group_name,
                "InputDataS3Uri": bucket.format("lake") + SILVER_PREFIX,
                "OutputS3Uri": bucket.format("artifacts") + OUTPUT_PREFIX + "pipeline",
            },
        )
        pipeline = sagemaker.CfnPipeline(
            self,
            "TrainingPipeline",
            pipeline_name=f"{env_config.prefix}-failure-model",
            pipeline_description="features -> train -> evaluate -> register -> compile",
            role_arn=self.execution_role.role_arn,
            pipeline_definition={
                "PipelineDefinitionBody": Fn.sub(
                    definition,
                    {
                        name: value
                        for name, value in {
                            "SageMakerExecutionRoleArn": self.execution_role.role_arn,
                            "SageMakerExecutionRoleName": self.execution_role.role_name,
                            "PlatformImageUri": self.image.image_uri,
                        }.items()
                        if f"${{{name}}}" in definition
                    },
                )
            },
        )
        self.execution_role.grant_pass_role(self.execution_role)
        return pipeline

    def _retraining(
        self, env_config: Environment, lake_run: sfn.IStateMachine
    ) -> list[events.CfnRule]:
        """Start the pipeline on the retraining schedule and, if set, after each successful
        lake run (new silver data); both with the pipeline's default parameters."""
        pipeline_arn = self.format_arn(
            service="sagemaker", resource="pipeline", resource_name=self.pipeline.pipeline_name
        )
        role = iam.Role(
            self,
            "RetrainRole",
            assumed_by=iam.ServicePrincipal("events.amazonaws.com"),
            description="EventBridge: starts the training pipeline",
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["sagemaker:StartPipelineExecution"], resources=[pipeline_arn]
            )
        )
        target = events.CfnRule.TargetProperty(
            id="TrainingPipeline", arn=pipeline_arn, role_arn=role.role_arn
        )
        retraining = env_config.retraining
        rules = [
            events.CfnRule(
                self,
                "RetrainOnSchedule",
                description="Retrains the failure model on the environment's schedule",
                schedule_expression=retraining.schedule_cron,
                state="ENABLED",
                targets=[target],
            )
        ]
        if retraining.on_new_silver:
            rules.append(
                events.CfnRule(
                    self,
                    "RetrainOnNewSilver",
                    description="Retrains after each lake run that wrote new silver data",
                    event_pattern={
                        "source": ["aws.states"],
                        "detail-type": ["Step Functions Execution Status Change"],
                        "detail": {
                            "status": ["SUCCEEDED"],
                            "stateMachineArn": [lake_run.state_machine_arn],
                        },
                    },
                    state="ENABLED",
                    targets=[target],
                )
            )
        for rule in rules:
            rule.node.add_dependency(self.pipeline)
        return rules
