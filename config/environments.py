"""Typed settings of each deployment environment (dev, staging, prod).

Environments differ only through these frozen dataclasses: the composition root passes them to
the stacks as keyword arguments, and no stack reads CDK context or environment variables.
Settings given at deployment time (an alarm address, the model version the gateways run, the
metric catalog) arrive as CDK context keys `<env>:<setting>` and are validated here with the
rest (see `Environment`). Account and region are never written here: they come from the
environment (`CDK_DEFAULT_ACCOUNT` / `CDK_DEFAULT_REGION`, which the CDK CLI sets from the AWS
profile); without them the stacks are environment-agnostic.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The reading contract's id rule (iiot/contract.py): factory ids become thing-group names, MQTT
# topic levels and S3 partition values.
_FACTORY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_THING_GROUP_NAME = re.compile(r"^[a-zA-Z0-9:_-]+$")
# Greengrass component versions are MAJOR.MINOR.PATCH.
_COMPONENT_VERSION = re.compile(r"\d+\.\d+\.\d+")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

REPOSITORY = Path(__file__).resolve().parent.parent
METRICS_CATALOG = REPOSITORY / "config" / "metrics.yaml"
ENVIRONMENT_NAMES = ("dev", "staging", "prod")
# The settings given at deployment time, as CDK context `<env>:<setting>` (Environment).
DEPLOY_INPUTS = ("alarm_email", "edge_model_version", "metrics_catalog")

# Kinesis Data Streams limits per shard (writes).
SHARD_RECORDS_PER_SECOND = 1000
SHARD_BYTES_PER_SECOND = 1_000_000


class ConfigError(ValueError):
    """An environment's settings are inconsistent."""


@dataclass(frozen=True, kw_only=True)
class Workload:
    """The peak telemetry an environment must absorb.

    Gateways upload compact batches (iiot/wire.py): one Kinesis record carries
    `readings_per_batch` readings at `bytes_per_reading` each on the wire.
    """

    readings_per_second: int
    readings_per_batch: int
    bytes_per_reading: float
    headroom: float = 1.25  # spare capacity for bursts and re-sends after a gateway outage

    def records_per_second(self) -> float:
        return self.readings_per_second / self.readings_per_batch

    def bytes_per_second(self) -> float:
        return self.readings_per_second * self.bytes_per_reading

    def shards(self) -> int:
        """Provisioned shards for the peak: the larger of the record and byte limits."""
        by_records = self.records_per_second() * self.headroom / SHARD_RECORDS_PER_SECOND
        by_bytes = self.bytes_per_second() * self.headroom / SHARD_BYTES_PER_SECOND
        return max(1, math.ceil(by_records), math.ceil(by_bytes))


@dataclass(frozen=True, kw_only=True)
class LayerLifecycle:
    """S3 storage tiers of one lake layer, in days after creation (None: never)."""

    infrequent_access_after_days: int | None = None
    glacier_after_days: int | None = None
    expire_after_days: int | None = None

    def problems(self, layer: str) -> list[str]:
        found = []
        ia, glacier, expire = (
            self.infrequent_access_after_days,
            self.glacier_after_days,
            self.expire_after_days,
        )
        if ia is not None and ia < 30:
            found.append(f"{layer}: S3 needs at least 30 days before Standard-IA, got {ia}")
        if ia is not None and glacier is not None and glacier < ia + 30:
            found.append(f"{layer}: Glacier ({glacier} d) must come 30+ days after IA ({ia} d)")
        last = max(d for d in (ia, glacier, 0) if d is not None)
        if expire is not None and expire <= last:
            found.append(f"{layer}: expiry ({expire} d) must come after the last tier ({last} d)")
        return found


@dataclass(frozen=True, kw_only=True)
class LakeSettings:
    """Lifecycle tiers per layer (the case study's: raw data to IA at 30 days, Glacier at 90)."""

    bronze: LayerLifecycle
    silver: LayerLifecycle
    gold: LayerLifecycle
    artifacts: LayerLifecycle
    logs: LayerLifecycle
    schedule_cron: str  # EventBridge cron of the bronze -> silver -> gold run, UTC
    spark_max_vcpu: int
    spark_max_memory_gb: int
    # Raw files under landing/ are kept in bronze once ingested; the bronze job lists all of
    # landing/ every run, so landed objects expire after a few days.
    landing_expire_after_days: int = 7

    def layers(self) -> Mapping[str, LayerLifecycle]:
        return {
            "bronze": self.bronze,
            "silver": self.silver,
            "gold": self.gold,
            "artifacts": self.artifacts,
            "logs": self.logs,
        }


@dataclass(frozen=True, kw_only=True)
class EdgeRollout:
    """How a Greengrass deployment rolls out to a factory's gateways."""

    max_per_minute: int
    failure_threshold_percent: float
    min_executed_things_before_abort: int
    timeout_seconds: int


@dataclass(frozen=True, kw_only=True)
class Environment:
    """Everything that differs between dev, staging and prod.

    The last three settings are deployment inputs: they are not written in this file but
    arrive as CDK context keys `<env>:<setting>`, either for one command
    (`npx cdk deploy -c prod:edge_model_version=1.0.7 iiot-prod-edge`) or committed under
    cdk.json's "context" so that the change is reviewed and later deploys keep it. An empty
    value leaves the setting at its default. A key for an unknown setting, or a setting
    without its environment (`-c edge_model_version=...`), is rejected.

    - `alarm_email` (`<env>:alarm_email`): an address subscribed to the operations alarm
      topic; None: the topic has no subscriber.
    - `edge_model_version` (`<env>:edge_model_version`): the com.iiot.FailureModel version
      the gateways run, MAJOR.MINOR.PATCH as the ML stack's publish flow makes them
      (`1.0.<model package version>`); None: the factory deployments run the sensor buffer
      without prediction.
    - `metrics_catalog` (`<env>:metrics_catalog`): the metric catalog whose edge thresholds
      the factory deployments set on the gateways; a path, relative to the repository unless
      absolute (default config/metrics.yaml). Only the stacks read this setting: the runtime
      bundles ship config/metrics.yaml, and the core's loader keeps $IIOT_METRICS_CATALOG
      for the processes that run locally.
    """

    name: Literal["dev", "staging", "prod"]
    account: str | None
    region: str | None
    factories: tuple[str, ...]
    workload: Workload
    kinesis_capacity: Literal["on_demand", "provisioned"]
    kinesis_retention_hours: int
    lake: LakeSettings
    log_retention_days: int
    keep_data_on_delete: bool  # prod keeps buckets, keys and databases when a stack is deleted
    vpc_cidr: str
    influx_instance_type: str
    influx_storage_gib: int
    influx_multi_az: bool
    redshift_base_rpu: int
    flink_parallelism: int
    flink_parallelism_per_kpu: int
    edge_rollout: EdgeRollout
    tags: Mapping[str, str] = field(default_factory=dict)
    # Deployment inputs (see above).
    alarm_email: str | None = None
    edge_model_version: str | None = None
    metrics_catalog: Path = METRICS_CATALOG

    @property
    def prefix(self) -> str:
        """Prefix of every stack and physical name: `iiot-dev`."""
        return f"iiot-{self.name}"

    def kinesis_shards(self) -> int | None:
        """Shard count when provisioned, None for on-demand."""
        return self.workload.shards() if self.kinesis_capacity == "provisioned" else None

    def validate(self) -> Environment:
        problems = []
        if not self.factories:
            problems.append("at least one factory is needed")
        for factory in self.factories:
            if not (_FACTORY_ID.match(factory) and _THING_GROUP_NAME.match(factory)):
                problems.append(
                    f"factory id {factory!r} must be letters, digits, '_', ':' or '-' (it "
                    "becomes a thing-group name and an MQTT topic level)"
                )
        if len(set(self.factories)) != len(self.factories):
            problems.append("factory ids must be unique")
        for layer, lifecycle in self.lake.layers().items():
            problems.extend(lifecycle.problems(layer))
        if not 24 <= self.kinesis_retention_hours <= 8760:
            problems.append("kinesis_retention_hours must be between 24 and 8760")
        if self.redshift_base_rpu < 8 or self.redshift_base_rpu % 8:
            problems.append("redshift_base_rpu must be a multiple of 8, at least 8")
        if not 0 < self.edge_rollout.failure_threshold_percent <= 100:
            problems.append("edge_rollout.failure_threshold_percent must be in (0, 100]")
        if self.alarm_email is not None and not _EMAIL.fullmatch(self.alarm_email):
            problems.append(
                f"alarm_email {self.alarm_email!r} (context {self.name}:alarm_email) is not an "
                "email address"
            )
        version = self.edge_model_version
        if version is not None and not _COMPONENT_VERSION.fullmatch(version):
            problems.append(
                f"edge_model_version {version!r} (context {self.name}:edge_model_version) must "
                "be a component version MAJOR.MINOR.PATCH, as the ML stack publishes them "
                "(1.0.<model package version>)"
            )
        if not self.metrics_catalog.is_file():
            problems.append(
                f"metrics_catalog {self.metrics_catalog} (context {self.name}:metrics_catalog) "
                "is not a file"
            )
        if problems:
            raise ConfigError(f"environment {self.name}: " + "; ".join(problems))
        return self


_DEV_LAKE = LakeSettings(
    bronze=LayerLifecycle(infrequent_access_after_days=30, expire_after_days=90),
    silver=LayerLifecycle(infrequent_access_after_days=30, expire_after_days=180),
    gold=LayerLifecycle(expire_after_days=365),
    artifacts=LayerLifecycle(expire_after_days=180),
    logs=LayerLifecycle(expire_after_days=30),
    schedule_cron="cron(0 2 * * ? *)",
    spark_max_vcpu=16,
    spark_max_memory_gb=64,
)

_PROD_LAKE = LakeSettings(
    bronze=LayerLifecycle(
        infrequent_access_after_days=30, glacier_after_days=90, expire_after_days=2555
    ),
    silver=LayerLifecycle(infrequent_access_after_days=90, glacier_after_days=365),
    gold=LayerLifecycle(infrequent_access_after_days=180),
    artifacts=LayerLifecycle(infrequent_access_after_days=90),
    logs=LayerLifecycle(
        infrequent_access_after_days=30, glacier_after_days=90, expire_after_days=400
    ),
    schedule_cron="cron(0 * * * ? *)",
    spark_max_vcpu=400,
    spark_max_memory_gb=3000,
)


def _from_environment() -> tuple[str | None, str | None]:
    return os.environ.get("CDK_DEFAULT_ACCOUNT"), os.environ.get("CDK_DEFAULT_REGION")


def is_deploy_input(key: str) -> bool:
    """Whether a CDK context key is meant as a deployment input (`prod:alarm_email`)."""
    return key.partition(":")[0] in ENVIRONMENT_NAMES or key in DEPLOY_INPUTS


def deploy_inputs(context: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The deployment inputs in CDK `context`, per environment, as Environment field values.

    Other context (CDK's feature flags and its own keys) is left alone; a key that names an
    environment but no known setting, a setting without its environment, or a value that is
    not text is rejected with the reason.
    """
    inputs: dict[str, dict[str, Any]] = {name: {} for name in ENVIRONMENT_NAMES}
    problems = []
    for key, value in sorted(context.items()):
        if not is_deploy_input(key):
            continue
        env, _, setting = key.partition(":")
        if key in DEPLOY_INPUTS:
            problems.append(
                f"context {key!r} names no environment: give it as <env>:{key} (env one of "
                f"{', '.join(ENVIRONMENT_NAMES)}), so that one deploy changes one environment"
            )
        elif setting not in DEPLOY_INPUTS:
            problems.append(
                f"context {key!r}: {setting!r} is not a deployment input; the inputs are "
                f"{', '.join(DEPLOY_INPUTS)}"
            )
        elif not isinstance(value, str):
            problems.append(f"context {key!r} must be text, got {value!r}")
        elif value:
            inputs[env][setting] = REPOSITORY / value if setting == "metrics_catalog" else value
    if problems:
        raise ConfigError("; ".join(problems))
    return inputs


def environments(context: Mapping[str, Any] | None = None) -> dict[str, Environment]:
    """dev, staging and prod, validated; account and region from the environment, deployment
    inputs from the CDK `context` (keys `<env>:<setting>`, see `Environment`)."""
    inputs = deploy_inputs(context or {})
    account, region = _from_environment()
    dev = Environment(
        name="dev",
        account=account,
        region=region,
        factories=("factory-01", "factory-02"),
        # 2 factories x 10 machines x 5 sensors at 1 Hz (the simulator's default plant).
        workload=Workload(readings_per_second=100, readings_per_batch=100, bytes_per_reading=6),
        kinesis_capacity="provisioned",
        kinesis_retention_hours=24,
        lake=_DEV_LAKE,
        log_retention_days=14,
        keep_data_on_delete=False,
        vpc_cidr="10.40.0.0/16",
        influx_instance_type="db.influx.medium",
        influx_storage_gib=20,
        influx_multi_az=False,
        redshift_base_rpu=8,
        flink_parallelism=1,
        flink_parallelism_per_kpu=1,
        edge_rollout=EdgeRollout(
            max_per_minute=10,
            failure_threshold_percent=50,
            min_executed_things_before_abort=1,
            timeout_seconds=900,
        ),
    )
    staging = Environment(
        name="staging",
        account=account,
        region=region,
        factories=("factory-01", "factory-02", "factory-03"),
        workload=Workload(readings_per_second=20_000, readings_per_batch=500, bytes_per_reading=6),
        kinesis_capacity="provisioned",
        kinesis_retention_hours=48,
        lake=_DEV_LAKE,
        log_retention_days=30,
        keep_data_on_delete=False,
        vpc_cidr="10.41.0.0/16",
        influx_instance_type="db.influx.large",
        influx_storage_gib=100,
        influx_multi_az=False,
        redshift_base_rpu=8,
        flink_parallelism=2,
        flink_parallelism_per_kpu=1,
        edge_rollout=EdgeRollout(
            max_per_minute=20,
            failure_threshold_percent=20,
            min_executed_things_before_abort=2,
            timeout_seconds=900,
        ),
    )
    prod = Environment(
        name="prod",
        account=account,
        region=region,
        factories=tuple(f"factory-{number:02d}" for number in range(1, 51)),
        # The reference workload: 1M sensors at 1 Hz, gateways upload 2000-reading batches.
        workload=Workload(
            readings_per_second=1_000_000, readings_per_batch=2000, bytes_per_reading=6
        ),
        kinesis_capacity="on_demand",
        kinesis_retention_hours=168,
        lake=_PROD_LAKE,
        log_retention_days=365,
        keep_data_on_delete=True,
        vpc_cidr="10.42.0.0/16",
        influx_instance_type="db.influx.2xlarge",
        influx_storage_gib=1000,
        influx_multi_az=True,
        redshift_base_rpu=32,
        flink_parallelism=8,
        flink_parallelism_per_kpu=1,
        edge_rollout=EdgeRollout(
            max_per_minute=50,
            failure_threshold_percent=10,
            min_executed_things_before_abort=5,
            timeout_seconds=1800,
        ),
    )
    return {
        env.name: dataclasses.replace(env, **inputs[env.name]).validate()
        for env in (dev, staging, prod)
    }
