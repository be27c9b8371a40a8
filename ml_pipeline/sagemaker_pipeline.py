"""The SageMaker pipeline (SDK 3.x), generated offline as a JSON definition.

    features (processing) -> train (ModelTrainer) -> evaluate (processing, evaluation.json)
      -> PR-AUC >= MinPrAuc ? -> register the model package -> compile for the gateways
                                  (processing: TL2cgen x86_64 + aarch64 -> failure_model.zip)
    train the anomaly detector (processing: per machine on normal operation, anomaly_model.zip)
      -> register it in its own model package group (the AnomalyModel component's source)

Every job runs the platform's own container image (ml_pipeline/container/Dockerfile, built
while the CDK app deploys),
whose entry points are this package's modules: ``iiot ml features``, the image's ``train``
command = ``python -m ml_pipeline.train`` (script mode: SM_CHANNEL_TRAIN / SM_MODEL_DIR),
``python -m ml_pipeline.evaluate_job``, ``iiot ml compile`` and ``iiot ml anomaly-train``.
Nothing account-specific is written here: buckets and instance types are pipeline parameters;
the execution role and the image are ``${...}`` placeholders that the CDK stack substitutes
(Fn::Sub). SageMaker Neo is
not used: it compiles XGBoost only up to 1.3 for edge targets (see `ml_pipeline.compile`).
The RegisterModel steps are written out as JSON (see `register_step`).

Generating needs no AWS account: ``SAGEMAKER_VALIDATE_ROLE=false`` and a region are set.
"""

from __future__ import annotations

import json
import os
from typing import Any

PIPELINE_NAME = "iiot-failure-model"
ANOMALY_ARTIFACT = "anomaly_model.zip"
REGION_FALLBACK = "eu-west-1"
PROCESSING = "/opt/ml/processing"
# Resolved by the CDK stack with Fn::Sub over the definition (the SDK's ModelTrainer takes only
# plain strings for these, so they cannot be pipeline parameters).
ROLE_PLACEHOLDER = "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${SageMakerExecutionRoleName}"
IMAGE_PLACEHOLDER = "${PlatformImageUri}"


def build_pipeline(region: str | None = None) -> Any:
    """The `sagemaker.mlops.workflow.Pipeline` object (imports the SDK: slow, about 1 GB)."""
    os.environ.setdefault("SAGEMAKER_VALIDATE_ROLE", "false")
    region = region or os.environ.get("AWS_DEFAULT_REGION") or REGION_FALLBACK
    os.environ.setdefault("AWS_DEFAULT_REGION", region)

    import boto3
    from sagemaker.core.processing import Processor
    from sagemaker.core.shapes import (
        ProcessingInput,
        ProcessingOutput,
        ProcessingS3Input,
        ProcessingS3Output,
    )
    from sagemaker.core.workflow.conditions import ConditionGreaterThanOrEqualTo
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join, JsonGet
    from sagemaker.core.workflow.parameters import (
        ParameterFloat,
        ParameterInteger,
        ParameterString,
    )
    from sagemaker.core.workflow.pipeline_context import PipelineSession
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow import (
        ConditionStep,
        Pipeline,
        ProcessingStep,
        TrainingStep,
    )
    from sagemaker.train.configs import Compute, InputData, OutputDataConfig
    from sagemaker.train.model_trainer import ModelTrainer

    session = PipelineSession(
        boto_session=boto3.Session(region_name=region), default_bucket="placeholder-resolved-by-cdk"
    )
    role, image = ROLE_PLACEHOLDER, IMAGE_PLACEHOLDER
    input_data = ParameterString("InputDataS3Uri")
    output_prefix = ParameterString("OutputS3Uri")
    model_group = ParameterString("ModelPackageGroupName", default_value="iiot-failure-model")
    anomaly_group = ParameterString(
        "AnomalyModelPackageGroupName", default_value="iiot-anomaly-model"
    )
    processing_instance = ParameterString("ProcessingInstanceType", default_value="ml.m5.xlarge")
    training_instance = ParameterString("TrainingInstanceType", default_value="ml.m5.xlarge")
    horizon_hours = ParameterInteger("HorizonHours", default_value=24)
    min_pr_auc = ParameterFloat("MinPrAuc", default_value=0.3)
    # Every run writes under its own folder, <OutputS3Uri>/<execution id>/: a model package
    # names its run's files (ModelDataUrl), so approving an older package after a newer run
    # publishes the older package's own models, not the newer run's (the publish flow finds
    # the compiled zip beside the package's ModelDataUrl).
    run_prefix = [output_prefix, ExecutionVariables.PIPELINE_EXECUTION_ID]

    def processor(name: str, entrypoint: list[str]) -> Processor:
        return Processor(
            role=role,
            image_uri=image,
            entrypoint=entrypoint,
            instance_count=1,
            instance_type=processing_instance,
            base_job_name=f"iiot-{name}",
            sagemaker_session=session,
        )

    def s3_input(name: str, uri: Any, local: str) -> ProcessingInput:
        return ProcessingInput(
            input_name=name,
            s3_input=ProcessingS3Input(
                s3_uri=uri, local_path=local, s3_data_type="S3Prefix", s3_input_mode="File"
            ),
        )

    def s3_output(name: str, local: str) -> ProcessingOutput:
        return ProcessingOutput(
            output_name=name,
            s3_output=ProcessingS3Output(
                s3_uri=Join(on="/", values=[*run_prefix, name]),
                local_path=local,
                s3_upload_mode="EndOfJob",
            ),
        )

    features_step = ProcessingStep(
        name="Features",
        step_args=processor(
            "features",
            ["iiot", "ml", "features", "--data", f"{PROCESSING}/input"],
        ).run(
            inputs=[s3_input("silver", input_data, f"{PROCESSING}/input")],
            outputs=[s3_output("features", f"{PROCESSING}/features")],
            arguments=[
                "--out",
                f"{PROCESSING}/features/features.npz",
                "--horizon-hours",
                horizon_hours.to_string(),
            ],
        ),
    )
    features_uri = features_step.properties.ProcessingOutputConfig.Outputs[
        "features"
    ].S3Output.S3Uri

    trainer = ModelTrainer(
        training_image=image,
        role=role,
        compute=Compute(instance_type=training_instance, instance_count=1),
        base_job_name="iiot-train",
        output_data_config=OutputDataConfig(
            s3_output_path=Join(on="/", values=[*run_prefix, "model"])
        ),
        sagemaker_session=session,
    )
    train_step = TrainingStep(
        name="Train",
        step_args=trainer.train(
            input_data_config=[InputData(channel_name="train", data_source=features_uri)]
        ),
    )
    model_data = train_step.properties.ModelArtifacts.S3ModelArtifacts

    report = PropertyFile(name="Evaluation", output_name="evaluation", path="evaluation.json")
    evaluate_step = ProcessingStep(
        name="Evaluate",
        step_args=processor("evaluate", ["python3", "-m", "ml_pipeline.evaluate_job"]).run(
            inputs=[
                s3_input("model", model_data, f"{PROCESSING}/model"),
                s3_input("features", features_uri, f"{PROCESSING}/features"),
            ],
            outputs=[s3_output("evaluation", f"{PROCESSING}/evaluation")],
        ),
        property_files=[report],
    )

    compile_step = ProcessingStep(
        name="CompileForGateways",
        step_args=processor(
            "compile",
            ["iiot", "ml", "compile", "--model", f"{PROCESSING}/model", "--arch", "x86_64,aarch64"],
        ).run(
            inputs=[s3_input("model", model_data, f"{PROCESSING}/model")],
            outputs=[s3_output("component", f"{PROCESSING}/component")],
            arguments=[
                "--out",
                f"{PROCESSING}/component/failure_model",
                "--zip",
                f"{PROCESSING}/component/failure_model.zip",
            ],
        ),
    )
    gate = ConditionStep(
        name="PrAucGate",
        conditions=[
            ConditionGreaterThanOrEqualTo(
                left=JsonGet(
                    step_name=evaluate_step.name, property_file=report, json_path="pr_auc"
                ),
                right=min_pr_auc,
            )
        ],
        if_steps=[compile_step],
        else_steps=[],
    )
    # The anomaly detector learns each machine's normal operation from the same silver data
    # (no labels needed beyond the failure records that mark what is not normal).
    anomaly_step = ProcessingStep(
        name="TrainAnomalyModel",
        step_args=processor(
            "anomaly",
            ["iiot", "ml", "anomaly-train", "--data", f"{PROCESSING}/input"],
        ).run(
            inputs=[s3_input("silver", input_data, f"{PROCESSING}/input")],
            outputs=[s3_output("anomaly", f"{PROCESSING}/anomaly")],
            arguments=[
                "--out",
                f"{PROCESSING}/anomaly/anomaly_model",
                "--zip",
                f"{PROCESSING}/anomaly/{ANOMALY_ARTIFACT}",
                "--horizon-hours",
                horizon_hours.to_string(),
            ],
        ),
    )
    return Pipeline(
        name=PIPELINE_NAME,
        parameters=[
            input_data,
            output_prefix,
            model_group,
            anomaly_group,
            processing_instance,
            training_instance,
            horizon_hours,
            min_pr_auc,
        ],
        steps=[features_step, train_step, evaluate_step, gate, anomaly_step],
        sagemaker_session=session,
    )


def register_step() -> dict[str, Any]:
    """The RegisterModel step, written out: the SDK's ModelBuilder.register() uploads code
    and creates buckets while building the request, which an offline definition must not do.
    The request is the CreateModelPackage request the pipeline service expects."""
    return {
        "Name": "Register",
        "Type": "RegisterModel",
        "Arguments": {
            "ModelPackageGroupName": {"Get": "Parameters.ModelPackageGroupName"},
            "ModelApprovalStatus": "PendingManualApproval",
            "InferenceSpecification": {
                "Containers": [
                    {
                        "Image": IMAGE_PLACEHOLDER,
                        "ModelDataUrl": {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"},
                    }
                ],
                "SupportedContentTypes": ["application/json"],
                "SupportedResponseMIMETypes": ["application/json"],
                "SupportedRealtimeInferenceInstanceTypes": ["ml.m5.large"],
                "SupportedTransformInstanceTypes": ["ml.m5.large"],
            },
            "ModelMetrics": {
                "ModelQuality": {
                    "Statistics": {
                        "ContentType": "application/json",
                        "S3Uri": {
                            "Std:Join": {
                                "On": "/",
                                "Values": [
                                    {
                                        "Get": "Steps.Evaluate.ProcessingOutputConfig"
                                        ".Outputs['evaluation'].S3Output.S3Uri"
                                    },
                                    "evaluation.json",
                                ],
                            }
                        },
                    }
                }
            },
        },
    }


def register_anomaly_step() -> dict[str, Any]:
    """RegisterAnomalyModel: the anomaly detector's zip as a package of its own group, pending
    approval like the failure model (its approval publishes a com.iiot.AnomalyModel version).
    No quality gate: the model has no labels to be scored on here; `iiot ml skab` and the
    demo's alert quality measure the method."""
    artifact = {
        "Std:Join": {
            "On": "/",
            "Values": [
                {
                    "Get": "Steps.TrainAnomalyModel.ProcessingOutputConfig"
                    ".Outputs['anomaly'].S3Output.S3Uri"
                },
                ANOMALY_ARTIFACT,
            ],
        }
    }
    return {
        "Name": "RegisterAnomalyModel",
        "Type": "RegisterModel",
        "Arguments": {
            "ModelPackageGroupName": {"Get": "Parameters.AnomalyModelPackageGroupName"},
            "ModelApprovalStatus": "PendingManualApproval",
            "InferenceSpecification": {
                "Containers": [{"Image": IMAGE_PLACEHOLDER, "ModelDataUrl": artifact}],
                "SupportedContentTypes": ["application/json"],
                "SupportedResponseMIMETypes": ["application/json"],
                "SupportedRealtimeInferenceInstanceTypes": ["ml.m5.large"],
                "SupportedTransformInstanceTypes": ["ml.m5.large"],
            },
        },
    }


def definition_json(region: str | None = None) -> str:
    """The pipeline definition as pretty JSON (what CDK's CfnPipeline takes): the SDK's
    definition with the Register step added before the compile step in the gate's if-branch,
    and RegisterAnomalyModel after the anomaly detector's training."""
    definition = json.loads(build_pipeline(region).definition())
    gate = next(step for step in definition["Steps"] if step["Type"] == "Condition")
    compile_step = gate["Arguments"]["IfSteps"][0]
    compile_step["DependsOn"] = ["Register"]
    gate["Arguments"]["IfSteps"].insert(0, register_step())
    definition["Steps"].append(register_anomaly_step())
    return json.dumps(definition, indent=2, sort_keys=True) + "\n"
