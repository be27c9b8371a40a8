"""The Delta Lake on S3, the Glue catalog that Redshift Spectrum reads (symlink manifests), and
the scheduled Spark run on EMR Serverless.

The Spark jobs (spark_jobs/) address the lake as one root with a prefix per layer
(`landing/`, `bronze/`, `silver/`, `gold/`, `_state/`), so the layers are prefixes of one
lake bucket, each with its own lifecycle tiers from the environment config; artifacts and
logs have buckets of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_emrserverless as emrs
from aws_cdk import aws_events as events
from aws_cdk import aws_glue as glue
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from config.environments import ArtifactPins, Environment, LayerLifecycle
from stacks import artifacts
from stacks.artifacts import ROOT
from stacks.constructs.access import (
    acknowledge,
    bucket_name,
    data_removal_policy,
    grant_bucket,
)
from stacks.constructs.deploy_time_image import DeployTimeImage, stage_context
from stacks.constructs.lake_job_runner import LakeJobRunner, SparkJob
from stacks.constructs.python_bundle import project_requirements
from stacks.constructs.secure_bucket import SecureBucket

EMR_RELEASE = "emr-7.12.0"
# EMR ships Delta Lake; these jars turn it on (no Maven download at run time).
DELTA_CONF = (
    "--conf spark.jars=/usr/share/aws/delta/lib/delta-spark.jar,"
    "/usr/share/aws/delta/lib/delta-storage.jar "
    "--conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension "
    "--conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog"
)
# The image's interpreter (spark_jobs/container/Dockerfile): EMR 7 runs Python 3.9 by default.
SPARK_PYTHON_VERSION = "3.11"
SPARK_PYTHON = f"/usr/bin/python{SPARK_PYTHON_VERSION}"
PYTHON_CONF = (
    f"--conf spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON={SPARK_PYTHON} "
    f"--conf spark.emr-serverless.driverEnv.PYSPARK_PYTHON={SPARK_PYTHON} "
    f"--conf spark.executorEnv.PYSPARK_PYTHON={SPARK_PYTHON}"
)
# The Glue Data Catalog as Spark's metastore: `maintain` registers new partitions of the tables
# Spectrum reads (MSCK REPAIR TABLE over their symlink manifests).
GLUE_CONF = (
    "--conf spark.hadoop.hive.metastore.client.factory.class="
    "com.amazonaws.glue.catalog.metastore.AWSGlueDataCatalogHiveClientFactory"
)
GLUE_PARTITION_ACTIONS = (
    "glue:GetDatabase",
    "glue:GetTable",
    "glue:GetPartition",
    "glue:GetPartitions",
    "glue:BatchGetPartition",
    "glue:CreatePartition",
    "glue:BatchCreatePartition",
)
# spark_jobs/main.py --job values, in order; `maintain` compacts, vacuums and writes the symlink
# manifests Redshift Spectrum reads.
LAKE_JOBS = ("bronze", "silver", "gold", "maintenance", "maintain")


# Where Timestream for InfluxDB writes an instance's logs in the logs bucket (fixed by the
# service: docs "Setup to view InfluxDB logs on Timestream InfluxDB instances").
INFLUX_LOG_PREFIX = "InfluxLogs/"
# EMR Serverless's Spark images, one repository per release; the lake image's base, pinned by
# digest (ArtifactPins.emr_image_digest).
EMR_IMAGE_REPOSITORY = "public.ecr.aws/emr-serverless/spark"


# Key prefixes of the lake bucket (spark_jobs/io.py: LakePaths). Firehose lands raw batches
# under landing/ (the bronze job's input); bronze keeps their bytes, so landing is transient.
LANDING = "landing/"
LAYER_PREFIXES = {"bronze": "bronze/", "silver": "silver/", "gold": "gold/"}


def lake_jobs(lake_root: str, catalog_tables: Sequence[str]) -> list[SparkJob]:
    """spark_jobs/main.py's jobs in order, on Python 3.11 with Delta; `maintain` also registers
    the new partitions of `catalog_tables` in the Glue catalog."""
    jobs = []
    for job in LAKE_JOBS:
        arguments = ["--job", job, "--lake-root", lake_root]
        spark_conf = f"{PYTHON_CONF} {DELTA_CONF}"
        if job == "maintain":
            arguments += ["--catalog-tables", ",".join(catalog_tables)]
            spark_conf += f" {GLUE_CONF}"
        jobs.append(SparkJob(job, tuple(arguments), spark_conf))
    return jobs


def spark_image_context() -> Path:
    """The lake jobs' image context: spark_jobs/container/Dockerfile, the jobs, the core and
    the catalog, and the core's dependencies plus pyarrow for aarch64 Linux, Python 3.11."""
    return stage_context(
        "spark",
        dockerfile=ROOT / "spark_jobs" / "container" / "Dockerfile",
        copies=[(ROOT / "iiot", ""), (ROOT / "spark_jobs", ""), (ROOT / "config", "")],
        requirements=[*project_requirements(leave_out=("typer", "rich")), "pyarrow"],
        architecture="arm64",
        python_version=SPARK_PYTHON_VERSION,
    )


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    comment: str = ""


@dataclass(frozen=True)
class DeltaTable:
    """A Delta table that Redshift Spectrum reads through its symlink manifests."""

    name: str
    path: str  # under the lake root
    columns: tuple[Column, ...]
    partition_keys: tuple[Column, ...] = ()
    comment: str = ""


def _columns(spec: str) -> tuple[Column, ...]:
    return tuple(Column(*item.split()) for item in spec.split(",") if item.strip())


# The Spectrum-facing tables of spark_jobs (transforms.SILVER_COLUMNS, machine_daily,
# factory_daily, maintenance.KPI_COLUMNS), partitioned as the jobs write them.
TABLES = (
    DeltaTable(
        "silver_readings",
        "silver/readings",
        _columns(
            "machine_id string, sensor_id string, metric string, unit string, timestamp bigint,"
            "event_time timestamp, value double, hour int, is_weekend boolean, shift string,"
            "rolling_count int, rolling_mean double, rolling_std double, window_mean double,"
            "window_max double, zscore double, is_anomaly boolean, batch_id string,"
            "ingest_seq bigint"
        ),
        _columns("event_date date, factory_id string"),
        "validated, de-duplicated readings with their rolling features",
    ),
    DeltaTable(
        "gold_machine_daily",
        "gold/machine_daily",
        _columns(
            "factory_id string, machine_id string, metric string, reading_count bigint,"
            "mean_value double, min_value double, max_value double, std_value double,"
            "anomaly_count bigint"
        ),
        _columns("event_date date"),
        "per machine, day and metric",
    ),
    DeltaTable(
        "gold_factory_daily",
        "gold/factory_daily",
        _columns(
            "factory_id string, active_machines bigint, active_sensors bigint,"
            "reading_count bigint, anomaly_count bigint, machines_with_anomalies bigint"
        ),
        _columns("event_date date"),
        "per factory and day",
    ),
    DeltaTable(
        "gold_machine_day_kpis",
        "gold/machine_day_kpis",
        _columns(
            "factory_id string, machine_id string, observed_h double, downtime_h double,"
            "unplanned_h double, planned_h double, failures bigint, repairs bigint,"
            "repair_h double, availability double, mtbf_h double, mttr_h double"
        ),
        _columns("event_date date"),
        "reliability per machine and day, from the maintenance system's records",
    ),
)


class LakeStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        pins: ArtifactPins,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        lake = env_config.lake
        keep = env_config.keep_data_on_delete
        self.key = kms.Key(
            self,
            "LakeKey",
            alias=f"alias/{env_config.prefix}-lake",
            description="Encrypts the lake buckets, the Glue catalog objects and job logs",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN if keep else RemovalPolicy.DESTROY,
        )
        self.prefix = prefix = env_config.prefix
        self.logs = SecureBucket(
            self,
            "Logs",
            bucket_name=bucket_name(prefix, "logs"),
            lifecycle={"": lake.logs},
            keep_on_delete=keep,
        ).bucket
        acknowledge(
            self.logs,
            "This is the access-log target of every other bucket; logging its own access into "
            "itself would loop.",
            "AwsSolutions-S1",
        )
        # Timestream for InfluxDB delivers the instance's engine logs here and checks, when the
        # instance is created, that this policy lets it (the timeseries stack's instance).
        self.logs.add_to_resource_policy(
            iam.PolicyStatement(
                sid="TimestreamInfluxDbLogDelivery",
                principals=[iam.ServicePrincipal("timestream-influxdb.amazonaws.com")],
                actions=["s3:PutObject"],
                resources=[self.logs.arn_for_objects(f"{INFLUX_LOG_PREFIX}*")],
            )
        )

        landing = LayerLifecycle(expire_after_days=lake.landing_expire_after_days)
        tiers = {LANDING: landing} | {
            prefix: lake.layers()[layer] for layer, prefix in LAYER_PREFIXES.items()
        }
        self.lake = SecureBucket(
            self,
            "Lake",
            bucket_name=bucket_name(prefix, "lake"),
            lifecycle=tiers,
            keep_on_delete=keep,
            key=self.key,
            access_logs=self.logs,
        ).bucket
        self.artifacts = SecureBucket(
            self,
            "Artifacts",
            bucket_name=bucket_name(prefix, "artifacts"),
            lifecycle={"": lake.artifacts},
            keep_on_delete=keep,
            key=self.key,
            access_logs=self.logs,
        ).bucket
        self.lake_root = f"s3://{self.lake.bucket_name}"

        self.database_name = f"iiot_{env_config.name}_lake"
        database = glue.CfnDatabase(
            self,
            "Database",
            catalog_id=self.account,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=self.database_name,
                description="Delta tables of the IIoT lake (symlink manifests for Spectrum)",
            ),
        )
        database.apply_removal_policy(data_removal_policy(env_config))
        self.tables = {}
        for table in TABLES:
            cfn_table = glue.CfnTable(
                self,
                f"Table{table.name.title().replace('_', '')}",
                catalog_id=self.account,
                database_name=self.database_name,
                table_input=_table_input(table, self.lake_root),
            )
            cfn_table.add_resource_dependency(database)
            # prod keeps the tables with their partitions (registered by the lake runs).
            cfn_table.apply_removal_policy(data_removal_policy(env_config))
            self.tables[table.name] = cfn_table

        self.spark_role = iam.Role(
            self,
            "SparkJobRole",
            assumed_by=iam.ServicePrincipal("emr-serverless.amazonaws.com"),
            description="EMR Serverless lake jobs: read bronze, write silver and gold",
        )
        grant_bucket(
            self.spark_role,
            self.spark_role,
            prefix=prefix,
            layer="lake",
            write=True,
            key=self.key,
            why="the Spark jobs read landed batches and write the bronze, silver and gold "
            "Delta tables and their watermarks under the one lake root",
        )
        grant_bucket(
            self.spark_role,
            self.spark_role,
            prefix=prefix,
            layer="logs",
            write=True,
            path="emr/",
            why="EMR Serverless writes the job runs' driver and executor logs",
        )
        entry_point = artifacts.SPARK_JOBS.require()
        self.spark_image = self._spark_image(env_config, pins)
        self.spark_app = emrs.CfnApplication(
            self,
            "SparkApplication",
            name=f"{env_config.prefix}-lake",
            release_label=EMR_RELEASE,
            type="SPARK",
            architecture="ARM64",
            auto_start_configuration=emrs.CfnApplication.AutoStartConfigurationProperty(
                enabled=True
            ),
            auto_stop_configuration=emrs.CfnApplication.AutoStopConfigurationProperty(
                enabled=True, idle_timeout_minutes=10
            ),
            maximum_capacity=emrs.CfnApplication.MaximumAllowedResourcesProperty(
                cpu=f"{lake.spark_max_vcpu} vCPU", memory=f"{lake.spark_max_memory_gb} GB"
            ),
            image_configuration=emrs.CfnApplication.ImageConfigurationInputProperty(
                image_uri=self.spark_image.image_uri
            ),
        )
        partitioned = [table for table in TABLES if table.partition_keys]
        # The id "Default" is left out of logical ids (CDK's makeUniqueId), so the runner's
        # resources keep the ids they had when this stack created them itself.
        self.job_runner = LakeJobRunner(
            self,
            "Default",
            application=self.spark_app,
            job_role=self.spark_role,
            entry_point=entry_point,
            jobs=lake_jobs(
                self.lake_root, [f"{self.database_name}.{table.name}" for table in partitioned]
            ),
            run_name_prefix="lake-",
            log_uri=f"s3://{self.logs.bucket_name}/emr/",
            schedule=events.Schedule.expression(lake.schedule_cron),
            schedule_description="Runs bronze -> silver -> gold -> maintain (Spectrum manifests)",
            log_retention_days=env_config.log_retention_days,
        )
        entry = self.job_runner.entry_point
        self.spark_role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"],
                resources=[f"{entry.bucket.bucket_arn}/{entry.s3_object_key}"],
            )
        )
        # `maintain` registers the new partitions of the tables Spectrum reads.
        self.spark_role.add_to_policy(
            iam.PolicyStatement(
                actions=list(GLUE_PARTITION_ACTIONS),
                resources=[
                    self.format_arn(service="glue", resource="catalog"),
                    self.format_arn(
                        service="glue", resource="database", resource_name=self.database_name
                    ),
                    *(
                        self.format_arn(
                            service="glue",
                            resource="table",
                            resource_name=f"{self.database_name}/{table.name}",
                        )
                        for table in partitioned
                    ),
                ],
            )
        )

    def _spark_image(self, env_config: Environment, pins: ArtifactPins) -> DeployTimeImage:
        """EMR's Spark image (pinned by digest) plus Python 3.11 with `iiot`, `spark_jobs` and
        their dependencies; EMR Serverless pulls it for this account's applications only."""
        digest = pins.require_emr_image_digest(f"{EMR_IMAGE_REPOSITORY}/{EMR_RELEASE}")
        image = DeployTimeImage(
            self,
            "SparkImage",
            repository_name=f"{env_config.prefix}-spark",
            context=spark_image_context(),
            architecture="arm64",
            keep_images=env_config.keep_data_on_delete,
            build_args={"EMR_RELEASE": EMR_RELEASE, "EMR_IMAGE_DIGEST": digest},
        )
        image.repository.add_to_resource_policy(
            iam.PolicyStatement(
                sid="EmrServerlessPull",
                principals=[iam.ServicePrincipal("emr-serverless.amazonaws.com")],
                actions=["ecr:BatchGetImage", "ecr:DescribeImages", "ecr:GetDownloadUrlForLayer"],
                conditions={
                    "StringLike": {
                        "aws:SourceArn": self.format_arn(
                            service="emr-serverless", resource="/applications", resource_name="*"
                        )
                    }
                },
            )
        )
        return image


def _table_input(table: DeltaTable, lake_root: str) -> glue.CfnTable.TableInputProperty:
    location = f"{lake_root}/{table.path}"

    def columns(items: tuple[Column, ...]) -> list[glue.CfnTable.ColumnProperty]:
        return [
            glue.CfnTable.ColumnProperty(name=c.name, type=c.type, comment=c.comment or None)
            for c in items
        ]

    return glue.CfnTable.TableInputProperty(
        name=table.name,
        description=table.comment,
        table_type="EXTERNAL_TABLE",
        parameters={"EXTERNAL": "TRUE", "delta.location": location},
        partition_keys=columns(table.partition_keys) or None,
        storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
            columns=columns(table.columns),
            location=f"{location}/_symlink_format_manifest/",
            input_format="org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat",
            output_format="org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
            serde_info=glue.CfnTable.SerdeInfoProperty(
                serialization_library="org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
            ),
        ),
    )
