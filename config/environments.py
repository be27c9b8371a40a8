"""Typed settings of each deployment environment (dev, staging, prod).

Environments differ only through these frozen dataclasses: the composition root passes them to
the stacks as keyword arguments, and no stack reads CDK context or environment variables.
Settings given at deployment time (the account and region, an alarm address, the model version
the gateways run, the metric catalog) arrive as CDK context keys `<env>:<setting>` and are
validated here with the rest (see `Environment`). Account ids are never written here: each
environment is pinned to the account and region its context names (`-c prod:account=...
-c prod:region=...`, or committed under cdk.json's "context"); only a sandbox (dev) may take the
CLI profile's (`CDK_DEFAULT_ACCOUNT` / `CDK_DEFAULT_REGION`). An environment that is neither
pinned nor a sandbox synthesizes for review, but its stacks refuse to deploy (see
stacks/environment_stacks.py).

Every account-wide name carries the environment (`Environment.prefix`, `cloud_topic`,
`component_name`, the metric namespaces), so dev, staging and prod can share one account.
Content pins of what the deploy-time builds fetch (`ArtifactPins`) are given once for all
environments as context `pins:<setting>`.
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
DEPLOY_INPUTS = (
    "account",
    "region",
    "alarm_email",
    "alert_emails",
    "alert_https",
    "escalation_emails",
    "edge_model_version",
    "edge_anomaly_model_version",
    "metrics_catalog",
    "opcua_plcs",
    "stream_calibration",
    "grafana_saml_metadata_url",
)
# Inputs that name a file, relative to the repository unless absolute.
PATH_INPUTS = ("metrics_catalog", "opcua_plcs", "stream_calibration")
# Inputs given as comma-separated lists (`-c prod:alert_emails=a@example.com,b@example.com`).
LIST_INPUTS = ("alert_emails", "alert_https", "escalation_emails")
_HTTPS = re.compile(r"https://[^\s,]+")
# Regions where every resource type of the app exists (cfn-lint's CloudFormation schemas;
# tests/infra/test_gates.py lints every template for each). GreengrassV2, the IoT thing types
# and groups, Timestream for InfluxDB or Managed Flink's logging option are missing elsewhere,
# e.g. eu-north-1, sa-east-1, me-central-1 (cfn-lint E3006); Managed Grafana (the dashboards)
# is missing in ca-central-1 and ap-south-1.
SUPPORTED_REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-central-1",
    "ap-northeast-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "me-south-1",
)
_ACCOUNT = re.compile(r"\d{12}")
# Content pins of the deploy-time builds, as CDK context `pins:<setting>` (ArtifactPins).
PINS_PREFIX = "pins"
PIN_INPUTS = ("emr_image_digest", "flink_connector_sha256")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

# Kinesis Data Streams limits per shard: writes, and reads shared by the polling consumers
# (GetRecords; Firehose and the InfluxDB writer's event source). An enhanced fan-out consumer
# (the Flink rules) has its own 2 MB/s per shard, so it adds nothing to the shared reads.
SHARD_RECORDS_PER_SECOND = 1000
SHARD_BYTES_PER_SECOND = 1_000_000
SHARD_READ_BYTES_PER_SECOND = 2_000_000

# --- Measured figures the sizing reads (re-measure with the command, then update here) ---------
#
# Wire bytes per reading of a compact batch (iiot/wire.py), by readings per batch: the
# simulator's fleet (100 machines x 5 sensors at 1 Hz, 10 minutes, seed 1; 299,610 readings)
# cut into batches in arrival order, as a gateway's uploader cuts them. Small batches compress
# worse: the zstd frame and the series table are paid per batch. Measured 2026-11-30 with the
# script in tests/infra/test_sizing.py (`pytest tests/infra/test_sizing.py -k wire -s` prints
# the figures; the test fails when the encoder moves them by more than 15 %); bench/edge_buffer.py
# measures 1.35 B/reading for the uploader's own ~20,000-reading batches.
WIRE_BYTES_PER_READING = {100: 18.29, 500: 5.89, 2000: 2.71, 5000: 1.88}
# Readings per second one Flink task slot takes through decode + rules, after JVM start, on
# heap state: bench/stream.py's `decode_rules_events_per_s` at 6e67161 on an idle machine
# (load 0.2-2, `bench/stream.py --repeat 3`, 2026-11-30): 108K, 126K, 113K/s, median 113K/s
# (the JSON rules in the same run: 138K/s). Managed Flink keeps state in RocksDB, where
# the windows' firing dominates (17-29K/s in the previous session's research, 10.5K/s on a
# loaded machine here): with autoscaling on (prod) the service adds KPUs when the
# application falls behind, and the FlinkConsumerBehind alarm says when it does. Since a4771db
# the bench emits watermarks every 200 ms as the deployed application does (before: after every
# reading, the tests' setting, about 10-20% more task CPU); re-measure on an idle machine with
# `.venv/bin/python bench/stream.py --repeat 3 --no-copying` before changing this figure.
DECODE_RULES_EVENTS_PER_SLOT = 113_000
# Readings per second one source subtask decodes (the iiot-batch format decodes inside the
# Kinesis source, and a shard is read by one subtask only, so this bounds the readings one
# shard can carry into the rules). bench/stream.py's decode-only figure: 143K/s at 0138b8e on
# a machine at load 10-22, 298K/s at 6e67161 idle. The loaded figure is kept: a Managed Flink
# KPU is one vCPU shared with the rules, and a low figure adds shards rather than leaving a
# decoding subtask behind.
DECODE_EVENTS_PER_SOURCE_SUBTASK = 143_000


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

    @classmethod
    def fleet(
        cls,
        *,
        machines: int,
        sensors_per_machine: int,
        reading_hz: float,
        readings_per_batch: int,
        headroom: float = 1.25,
    ) -> Workload:
        """The workload of `machines` x `sensors_per_machine` sensors at `reading_hz`, uploaded
        in batches of `readings_per_batch` at the measured wire size of that batch size
        (WIRE_BYTES_PER_READING)."""
        if readings_per_batch not in WIRE_BYTES_PER_READING:
            raise ConfigError(
                f"no measured wire size for {readings_per_batch}-reading batches: measure it "
                f"(tests/infra/test_sizing.py) or choose one of {sorted(WIRE_BYTES_PER_READING)}"
            )
        return cls(
            readings_per_second=round(machines * sensors_per_machine * reading_hz),
            readings_per_batch=readings_per_batch,
            bytes_per_reading=WIRE_BYTES_PER_READING[readings_per_batch],
            headroom=headroom,
        )


@dataclass(frozen=True, kw_only=True)
class StreamSizing:
    """The telemetry stream's shards and the Flink rules' parallelism for a workload, with the
    figures each comes from (shards needed by each limit, before rounding up)."""

    shards_by_records: float
    shards_by_bytes_in: float
    shards_by_bytes_out: float
    shards_by_decode: float
    shards: int
    parallelism: int
    kpus: int  # the parallelism's KPUs plus Managed Flink's one for orchestration


def size_stream(
    workload: Workload,
    *,
    polling_consumers: int = 2,
    events_per_slot: float = DECODE_RULES_EVENTS_PER_SLOT,
    decode_events_per_subtask: float = DECODE_EVENTS_PER_SOURCE_SUBTASK,
    parallelism_per_kpu: int = 1,
) -> StreamSizing:
    """Shards and Flink parallelism for the peak `workload` (its headroom included).

    Kinesis, per shard: 1,000 records/s and 1 MB/s in; 2 MB/s out shared by the
    `polling_consumers` (Firehose and the InfluxDB writer), while the Flink rules read through
    their own enhanced fan-out consumer (2 MB/s per shard of their own). The rules decode the
    batches in their Kinesis source, where one subtask reads a shard, so a shard carries at
    most what one subtask decodes (`decode_events_per_subtask`). The shard count is the
    largest of the four needs. Flink: the peak readings/s over what one task slot measured
    through decode + rules (`events_per_slot`), and at least one slot per shard (a shard's
    reader is one subtask); one slot per KPU by default (a KPU is one vCPU, the core the
    figure was measured on), plus the orchestration KPU.
    """
    records = workload.records_per_second() * workload.headroom
    bytes_in = workload.bytes_per_second() * workload.headroom
    by_records = records / SHARD_RECORDS_PER_SECOND
    by_bytes_in = bytes_in / SHARD_BYTES_PER_SECOND
    by_bytes_out = bytes_in * polling_consumers / SHARD_READ_BYTES_PER_SECOND
    peak_readings = workload.readings_per_second * workload.headroom
    by_decode = peak_readings / decode_events_per_subtask
    needs = (by_records, by_bytes_in, by_bytes_out, by_decode)
    shards = max(1, *(math.ceil(need) for need in needs))
    parallelism = max(shards, math.ceil(peak_readings / events_per_slot))
    return StreamSizing(
        shards_by_records=by_records,
        shards_by_bytes_in=by_bytes_in,
        shards_by_bytes_out=by_bytes_out,
        shards_by_decode=by_decode,
        shards=shards,
        parallelism=parallelism,
        kpus=math.ceil(parallelism / parallelism_per_kpu) + 1,
    )


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
class ClientDevices:
    """The gateways' local MQTT broker for sensors and PLCs (Greengrass client devices).

    Each factory's deployment runs the client device auth component, the broker, the IP
    detector (it reports the gateway's addresses for discovery) and the MQTT bridge that hands
    `factory/<id>/readings` from the local broker to the components. A sensor belongs to its
    factory's device group when its thing name starts with `<env prefix>-<factory>-`
    (`iiot-dev-factory-01-press-07`) and may then connect and publish its factory's readings
    topic, nothing else. The broker is Moquette (MQTT 3.1.1, runs in the nucleus's JVM); AWS's
    EMQX broker (MQTT 5) needs Docker on the gateway and is not offered until a gateway image
    with Docker is part of the platform.
    """

    broker: Literal["moquette"]


@dataclass(frozen=True, kw_only=True)
class Retraining:
    """When the SageMaker pipeline retrains the failure model.

    `schedule_cron` (EventBridge cron, UTC) starts it regularly; `on_new_silver` also starts it
    when a lake run has written new silver data (the lake state machine succeeded). Where the
    lake runs hourly (prod) the data trigger would retrain every hour, so it is a setting.
    """

    schedule_cron: str
    on_new_silver: bool


@dataclass(frozen=True, kw_only=True)
class Environment:
    """Everything that differs between dev, staging and prod.

    The settings after `tags` are deployment inputs (DEPLOY_INPUTS): they are not written in
    this file but arrive as CDK context keys `<env>:<setting>`, either for one command
    (`npx cdk deploy -c prod:edge_model_version=1.0.7 'iiot-prod/edge'`) or committed under
    cdk.json's "context" so that the change is reviewed and later deploys keep it. An empty
    value leaves the setting at its default. A key for an unknown setting, or a setting
    without its environment (`-c edge_model_version=...`), is rejected.

    - `account`, `region` (`<env>:account`, `<env>:region`): the AWS account (12 digits) and
      region (one of SUPPORTED_REGIONS) the environment's stacks deploy to. A `sandbox`
      environment without them takes the CLI profile's; any other stays unpinned and its
      stacks refuse to deploy until both are given.
    - `alarm_email` (`<env>:alarm_email`): an address subscribed to the operations alarm
      topic; None: the topic has no subscriber.
    - `alert_emails`, `alert_https` (`<env>:alert_emails`, `<env>:alert_https`,
      comma-separated): addresses and HTTPS endpoints subscribed to the equipment alert topic
      (every routed alert); `escalation_emails`: addresses subscribed to the escalation topic
      (critical alerts). Empty: the topic has no subscriber of that kind.
    - `edge_model_version` (`<env>:edge_model_version`): the com.iiot.FailureModel version
      the gateways run, MAJOR.MINOR.PATCH as the ML stack's publish flow makes them
      (`1.0.<model package version>`); None: the factory deployments run the sensor buffer
      without prediction.
    - `edge_anomaly_model_version` (`<env>:edge_anomaly_model_version`): the
      com.iiot.AnomalyModel version the gateways' FailurePredictor runs (the per-machine
      multivariate anomaly detector), MAJOR.MINOR.PATCH as the ML stack's anomaly publish flow
      makes them (`1.0.<anomaly model package version>`). The two are given together or not
      at all: the FailurePredictor's recipe depends on both model components and Greengrass
      resolves every dependency of a deployment. None (both): the factory deployments run
      the sensor buffer without prediction.
    - `opcua_plcs` (`<env>:opcua_plcs`): a YAML file `{<factory>: {<plc name>: {endpoint,
      nodes: [...]}}}` (the OpcUaCollector's `plcs`, edge_components/README.md): each factory
      named there also runs the collector with its PLCs (validated at synth by the
      component's own rules); None: no factory runs it.
    - `metrics_catalog` (`<env>:metrics_catalog`): the metric catalog whose edge thresholds
      the factory deployments set on the gateways; a path, relative to the repository unless
      absolute (default config/metrics.yaml). Only the stacks read this setting: the runtime
      bundles ship config/metrics.yaml, and the core's loader keeps $IIOT_METRICS_CATALOG
      for the processes that run locally.
    - `stream_calibration` (`<env>:stream_calibration`): a rapid-change calibration (the JSON
      `iiot stream calibrate` writes, kda_sql/calibration.py) the deployed Flink rules are
      rendered with: per-series windows and limits learned from normal operation. A path,
      relative to the repository unless absolute; a named file that is missing or invalid
      fails the synth. None: the rules keep the catalog's limits (the checked-in kda_sql/sql).
    - `grafana_saml_metadata_url` (`<env>:grafana_saml_metadata_url`): the https URL of the
      SAML identity provider's metadata that signs users in to the environment's Managed
      Grafana workspace (assertion attribute `role`: `grafana-admin` or `grafana-editor`);
      None: IAM Identity Center signs them in (stacks/grafana_stack.py).
    """

    name: Literal["dev", "staging", "prod"]
    sandbox: bool  # may deploy to whatever account the CLI profile names (dev)
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
    influx_retention_days: int  # hot time series; the lake keeps the history
    redshift_base_rpu: int
    # Cost guardrails: the warehouse's ceiling, Flink's autoscaling, the interface endpoints'
    # Availability Zones, and the monthly budget whose alerts reach the operations topic.
    redshift_max_rpu: int
    flink_parallelism: int
    flink_parallelism_per_kpu: int
    flink_autoscaling: bool
    single_az_endpoints: bool
    monthly_budget_usd: int
    edge_rollout: EdgeRollout
    retraining: Retraining
    client_devices: ClientDevices
    tags: Mapping[str, str] = field(default_factory=dict)
    # Deployment inputs (see above).
    account: str | None = None
    region: str | None = None
    alarm_email: str | None = None
    alert_emails: tuple[str, ...] = ()
    alert_https: tuple[str, ...] = ()
    escalation_emails: tuple[str, ...] = ()
    edge_model_version: str | None = None
    edge_anomaly_model_version: str | None = None
    metrics_catalog: Path = METRICS_CATALOG
    opcua_plcs: Path | None = None
    stream_calibration: Path | None = None
    grafana_saml_metadata_url: str | None = None

    @property
    def prefix(self) -> str:
        """Prefix of every stack and physical name: `iiot-dev`."""
        return f"iiot-{self.name}"

    @property
    def pinned(self) -> bool:
        """Whether the stacks name their account and region (else they take the CLI's)."""
        return self.account is not None and self.region is not None

    def cloud_topic(self, topic: str) -> str:
        """The environment's IoT Core topic for one of iiot/topics.py's cloud topics (or a
        filter): `factory/anomalies` -> `iiot/dev/factory/anomalies`. The gateway components
        keep the plain names as defaults (local runs); deployments set these."""
        return f"iiot/{self.name}/{topic}"

    def factory_topic(self, topic: str, factory: str) -> str:
        """The environment's IoT Core topic of one factory for one of iiot/topics.py's cloud
        topics (`factory/...`): `factory/sensor/data` -> `iiot/dev/factory/f1/sensor/data`.
        The gateway IoT policy lets a gateway publish only under its own factory's topics
        (its thing's `factory_id` attribute); the rules read the factory at `topic(4)`."""
        return self.cloud_topic(f"factory/{factory}/{topic.removeprefix('factory/')}")

    def sensor_thing_prefix(self, factory: str) -> str:
        """Thing names of a factory's sensors start with this: `iiot-dev-factory-01-`."""
        return f"{self.prefix}-{factory}-"

    def component_name(self, name: str) -> str:
        """The environment's Greengrass component name: component names and versions are
        account-wide in a region, so `com.iiot.SensorBuffer` -> `com.iiot.dev.SensorBuffer`."""
        vendor, _, component = name.rpartition(".")
        return f"{vendor}.{self.name}.{component}"

    @property
    def metrics_namespace(self) -> str:
        """CloudWatch namespace of the platform's own metrics (the functions'): `IIoT/dev`."""
        return f"IIoT/{self.name}"

    @property
    def gateway_metrics_namespace(self) -> str:
        """CloudWatch namespace of the gateways' health metrics: `IIoT/dev/Gateway`."""
        return f"{self.metrics_namespace}/Gateway"

    def stream_sizing(self) -> StreamSizing:
        """The telemetry stream and Flink sized for this environment's workload (size_stream)."""
        return size_stream(self.workload, parallelism_per_kpu=self.flink_parallelism_per_kpu)

    def kinesis_shards(self) -> int | None:
        """Shard count when provisioned, None for on-demand."""
        return self.stream_sizing().shards if self.kinesis_capacity == "provisioned" else None

    def validate(self) -> Environment:
        problems = []
        needed = self.stream_sizing().parallelism
        if self.flink_parallelism < needed:
            problems.append(
                f"flink_parallelism {self.flink_parallelism} is below the {needed} task slots "
                f"{self.workload.readings_per_second:,} readings/s need (size_stream)"
            )
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
        if self.redshift_max_rpu < self.redshift_base_rpu or self.redshift_max_rpu % 8:
            problems.append("redshift_max_rpu must be a multiple of 8, at least the base")
        if self.monthly_budget_usd < 1:
            problems.append("monthly_budget_usd must be at least 1")
        if self.account is not None and not _ACCOUNT.fullmatch(self.account):
            problems.append(
                f"account {self.account!r} (context {self.name}:account) must be a 12-digit "
                "AWS account id"
            )
        if self.region is not None and self.region not in SUPPORTED_REGIONS:
            problems.append(
                f"region {self.region!r} (context {self.name}:region) is not supported: the "
                f"app's resource types all exist in {', '.join(SUPPORTED_REGIONS)}"
            )
        if (self.account is None) != (self.region is None):
            problems.append(
                f"give both {self.name}:account and {self.name}:region (one environment, one "
                "account and region)"
            )
        if self.influx_retention_days < 1:
            problems.append("influx_retention_days must be at least 1")
        if not 0 < self.edge_rollout.failure_threshold_percent <= 100:
            problems.append("edge_rollout.failure_threshold_percent must be in (0, 100]")
        if self.alarm_email is not None and not _EMAIL.fullmatch(self.alarm_email):
            problems.append(
                f"alarm_email {self.alarm_email!r} (context {self.name}:alarm_email) is not an "
                "email address"
            )
        for setting in ("alert_emails", "escalation_emails"):
            bad = [a for a in getattr(self, setting) if not _EMAIL.fullmatch(a)]
            if bad:
                problems.append(
                    f"{setting} {bad} (context {self.name}:{setting}) are not email addresses"
                )
        bad = [url for url in self.alert_https if not _HTTPS.fullmatch(url)]
        if bad:
            problems.append(
                f"alert_https {bad} (context {self.name}:alert_https) are not https:// URLs"
            )
        for setting in ("edge_model_version", "edge_anomaly_model_version"):
            version = getattr(self, setting)
            if version is not None and not _COMPONENT_VERSION.fullmatch(version):
                problems.append(
                    f"{setting} {version!r} (context {self.name}:{setting}) must be a component "
                    "version MAJOR.MINOR.PATCH, as the ML stack publishes them "
                    "(1.0.<model package version>)"
                )
        if (self.edge_anomaly_model_version is None) != (self.edge_model_version is None):
            given, missing = (
                ("edge_model_version", "edge_anomaly_model_version")
                if self.edge_anomaly_model_version is None
                else ("edge_anomaly_model_version", "edge_model_version")
            )
            problems.append(
                f"{given} (context {self.name}:{given}) needs {missing} (context "
                f"{self.name}:{missing}): the FailurePredictor's recipe depends on both model "
                "components, and Greengrass resolves every dependency of a deployment (SOFT "
                "ones too), so a deployment naming one model fails while the other has no "
                "published version"
            )
        if self.grafana_saml_metadata_url is not None and not _HTTPS.fullmatch(
            self.grafana_saml_metadata_url
        ):
            problems.append(
                f"grafana_saml_metadata_url {self.grafana_saml_metadata_url!r} (context "
                f"{self.name}:grafana_saml_metadata_url) is not an https:// URL"
            )
        if self.opcua_plcs is not None:
            problems += _plc_problems(self)
        if self.stream_calibration is not None:
            problems += _calibration_problems(self)
        if not self.metrics_catalog.is_file():
            problems.append(
                f"metrics_catalog {self.metrics_catalog} (context {self.name}:metrics_catalog) "
                "is not a file"
            )
        if problems:
            raise ConfigError(f"environment {self.name}: " + "; ".join(problems))
        return self


def opcua_plcs(env: Environment) -> dict[str, dict[str, Any]]:
    """The environment's `opcua_plcs` file: factory -> the collector's `plcs` ({} if none)."""
    if env.opcua_plcs is None:
        return {}
    import yaml

    loaded = yaml.safe_load(env.opcua_plcs.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"opcua_plcs {env.opcua_plcs}: not a mapping of factory -> plcs")
    return {str(factory): plcs for factory, plcs in loaded.items()}


def _calibration_problems(env: Environment) -> list[str]:
    """The file must exist here; its content is checked when the streaming stack loads it with
    kda_sql.calibration (stacks/streaming_stack.py: load_calibration), which fails the synth."""
    assert env.stream_calibration is not None
    if not env.stream_calibration.is_file():
        return [
            f"stream_calibration {env.stream_calibration} (context {env.name}:stream_calibration) "
            "is not a file (write one with `iiot stream calibrate`)"
        ]
    return []


def _plc_problems(env: Environment) -> list[str]:
    where = f"opcua_plcs {env.opcua_plcs} (context {env.name}:opcua_plcs)"
    assert env.opcua_plcs is not None
    if not env.opcua_plcs.is_file():
        return [f"{where} is not a file"]
    try:
        plcs = opcua_plcs(env)
    except (ConfigError, ValueError) as error:
        return [f"{where}: {error}"]
    unknown = sorted(set(plcs) - set(env.factories))
    if unknown:
        return [f"{where} names factories {unknown} that {env.name} does not have"]
    return [
        f"{where}: factory {factory}: its plcs must be a mapping of PLC name -> endpoint, nodes"
        for factory, value in plcs.items()
        if not isinstance(value, dict) or not value
    ]


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
    """The CLI profile's account and region (the CDK CLI sets these), for a sandbox."""
    return os.environ.get("CDK_DEFAULT_ACCOUNT"), os.environ.get("CDK_DEFAULT_REGION")


def is_deploy_input(key: str) -> bool:
    """Whether a CDK context key is meant as a deployment input (`prod:alarm_email`) or an
    artifact pin (`pins:flink_connector_sha256`)."""
    scope = key.partition(":")[0]
    return scope in ENVIRONMENT_NAMES or scope == PINS_PREFIX or key in DEPLOY_INPUTS


@dataclass(frozen=True, kw_only=True)
class ArtifactPins:
    """Content pins of what the deployment builds fetch from outside the project, for every
    environment, as CDK context `pins:<setting>` (committed under cdk.json's "context" once
    verified). This machine reaches neither Docker registries nor Maven, and no published value
    was found for these two, so they are required: the synth names the command that gets each.

    - `emr_image_digest` (`pins:emr_image_digest`): the digest (`sha256:...`) of EMR
      Serverless's Spark image of the lake application's release, the lake image's base.
    - `flink_connector_sha256` (`pins:flink_connector_sha256`): the SHA-256 of the Kinesis SQL
      connector jar the Flink application package carries.

    The pipeline image's base (python:3.11-slim-bookworm) is pinned in its Dockerfile.
    """

    emr_image_digest: str | None = None
    flink_connector_sha256: str | None = None

    def require_emr_image_digest(self, image: str) -> str:
        """The digest, or ConfigError with the command that gets it for `image`."""
        if self.emr_image_digest is None:
            raise ConfigError(
                f"context {PINS_PREFIX}:emr_image_digest is not set: the lake image is built "
                f"FROM {image} pinned by digest. Get it with `docker buildx imagetools inspect "
                f"{image}:latest` (the Digest line, sha256:...), check it, and commit it as "
                f'"{PINS_PREFIX}:emr_image_digest" under cdk.json\'s "context"'
            )
        return self.emr_image_digest

    def require_flink_connector_sha256(self, coordinates: str, jar: str) -> str:
        """The jar's SHA-256, or ConfigError with the commands that get the jar `coordinates`
        names and its checksum."""
        if self.flink_connector_sha256 is None:
            raise ConfigError(
                f"context {PINS_PREFIX}:flink_connector_sha256 is not set: the Flink package "
                f"checks the connector jar's SHA-256. Get it on a machine with Maven: `mvn "
                f"dependency:copy -Dartifact={coordinates} -DoutputDirectory=lib && sha256sum "
                f"lib/{jar}` (Maven checks the repository's published checksums), and commit "
                f'it as "{PINS_PREFIX}:flink_connector_sha256" under cdk.json\'s "context"'
            )
        return self.flink_connector_sha256

    def validate(self) -> ArtifactPins:
        problems = []
        digest, sha = self.emr_image_digest, self.flink_connector_sha256
        if digest is not None and not _DIGEST.fullmatch(digest):
            problems.append(f"{PINS_PREFIX}:emr_image_digest {digest!r} must be sha256:<64 hex>")
        if sha is not None and not _SHA256.fullmatch(sha):
            problems.append(f"{PINS_PREFIX}:flink_connector_sha256 {sha!r} must be 64 hex digits")
        if problems:
            raise ConfigError("; ".join(problems))
        return self


def artifact_pins(context: Mapping[str, Any]) -> ArtifactPins:
    """The `pins:<setting>` values of CDK `context`, validated; an unknown pin is rejected."""
    values: dict[str, Any] = {}
    problems = []
    for key, value in sorted(context.items()):
        scope, _, setting = key.partition(":")
        if scope != PINS_PREFIX:
            continue
        if setting not in PIN_INPUTS:
            problems.append(f"context {key!r}: the pins are {', '.join(PIN_INPUTS)}")
        elif not isinstance(value, str):
            problems.append(f"context {key!r} must be text, got {value!r}")
        elif value:
            values[setting] = value
    if problems:
        raise ConfigError("; ".join(problems))
    return ArtifactPins(**values).validate()


def deploy_inputs(context: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The deployment inputs in CDK `context`, per environment, as Environment field values.

    Other context (CDK's feature flags and its own keys) is left alone; a key that names an
    environment but no known setting, a setting without its environment, or a value that is
    not text is rejected with the reason.
    """
    inputs: dict[str, dict[str, Any]] = {name: {} for name in ENVIRONMENT_NAMES}
    problems = []
    for key, value in sorted(context.items()):
        if not is_deploy_input(key) or key.partition(":")[0] == PINS_PREFIX:
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
        elif value and setting in LIST_INPUTS:
            inputs[env][setting] = tuple(item.strip() for item in value.split(",") if item.strip())
        elif value:
            inputs[env][setting] = REPOSITORY / value if setting in PATH_INPUTS else value
    if problems:
        raise ConfigError("; ".join(problems))
    return inputs


def environments(context: Mapping[str, Any] | None = None) -> dict[str, Environment]:
    """dev, staging and prod, validated; deployment inputs from the CDK `context` (keys
    `<env>:<setting>`, see `Environment`), and for a sandbox without its own account and
    region, the CLI profile's."""
    inputs = deploy_inputs(context or {})
    cli_account, cli_region = _from_environment()
    # The peak telemetry of each environment; the stream and Flink are sized from it.
    # dev: 2 factories x 10 machines x 5 sensors at 1 Hz (the simulator's default plant).
    dev_load = Workload.fleet(
        machines=20, sensors_per_machine=5, reading_hz=1, readings_per_batch=100
    )
    staging_load = Workload.fleet(
        machines=200, sensors_per_machine=100, reading_hz=1, readings_per_batch=500
    )
    # prod, the reference workload: 10,000 machines x 100 sensors at 1 Hz (1M readings/s),
    # gateways upload 2000-reading batches.
    prod_load = Workload.fleet(
        machines=10_000, sensors_per_machine=100, reading_hz=1, readings_per_batch=2000
    )
    dev = Environment(
        name="dev",
        sandbox=True,
        factories=("factory-01", "factory-02"),
        workload=dev_load,
        kinesis_capacity="provisioned",
        kinesis_retention_hours=24,
        lake=_DEV_LAKE,
        log_retention_days=14,
        keep_data_on_delete=False,
        vpc_cidr="10.40.0.0/16",
        influx_instance_type="db.influx.medium",
        influx_storage_gib=20,
        influx_multi_az=False,
        influx_retention_days=7,
        redshift_base_rpu=8,
        redshift_max_rpu=8,
        flink_autoscaling=False,
        single_az_endpoints=True,
        monthly_budget_usd=1500,
        flink_parallelism=size_stream(dev_load).parallelism,  # from measurement
        flink_parallelism_per_kpu=1,
        edge_rollout=EdgeRollout(
            max_per_minute=10,
            failure_threshold_percent=50,
            min_executed_things_before_abort=1,
            timeout_seconds=900,
        ),
        # The lake runs daily: retrain after each run, and weekly in any case.
        retraining=Retraining(schedule_cron="cron(0 4 ? * MON *)", on_new_silver=True),
        client_devices=ClientDevices(broker="moquette"),
    )
    staging = Environment(
        name="staging",
        sandbox=False,
        factories=("factory-01", "factory-02", "factory-03"),
        workload=staging_load,
        kinesis_capacity="provisioned",
        kinesis_retention_hours=48,
        lake=_DEV_LAKE,
        log_retention_days=30,
        keep_data_on_delete=False,
        vpc_cidr="10.41.0.0/16",
        influx_instance_type="db.influx.large",
        influx_storage_gib=100,
        influx_multi_az=False,
        influx_retention_days=30,
        redshift_base_rpu=8,
        redshift_max_rpu=32,
        flink_autoscaling=False,
        single_az_endpoints=False,
        monthly_budget_usd=5000,
        flink_parallelism=size_stream(staging_load).parallelism,  # from measurement
        flink_parallelism_per_kpu=1,
        edge_rollout=EdgeRollout(
            max_per_minute=20,
            failure_threshold_percent=20,
            min_executed_things_before_abort=2,
            timeout_seconds=900,
        ),
        retraining=Retraining(schedule_cron="cron(0 4 ? * MON *)", on_new_silver=True),
        client_devices=ClientDevices(broker="moquette"),
    )
    prod = Environment(
        name="prod",
        sandbox=False,
        factories=tuple(f"factory-{number:02d}" for number in range(1, 51)),
        workload=prod_load,
        # Provisioned from the sizing: on demand would bill every GB in and again out per
        # consumer (three) at several times the shards' price.
        kinesis_capacity="provisioned",
        kinesis_retention_hours=168,
        lake=_PROD_LAKE,
        log_retention_days=365,
        keep_data_on_delete=True,
        vpc_cidr="10.42.0.0/16",
        influx_instance_type="db.influx.2xlarge",
        influx_storage_gib=1000,
        influx_multi_az=True,
        influx_retention_days=90,
        redshift_base_rpu=32,
        redshift_max_rpu=128,
        flink_autoscaling=True,
        single_az_endpoints=False,
        monthly_budget_usd=60000,
        flink_parallelism=size_stream(prod_load).parallelism,  # from measurement
        flink_parallelism_per_kpu=1,
        edge_rollout=EdgeRollout(
            max_per_minute=50,
            failure_threshold_percent=10,
            min_executed_things_before_abort=5,
            timeout_seconds=1800,
        ),
        # The lake runs hourly: a retraining per lake run would be 24 pipeline runs a day, so
        # prod retrains on its schedule (daily) only.
        retraining=Retraining(schedule_cron="cron(0 4 * * ? *)", on_new_silver=False),
        client_devices=ClientDevices(broker="moquette"),
    )

    def configured(env: Environment) -> Environment:
        given = inputs[env.name]
        if env.sandbox and "account" not in given and "region" not in given:
            given = {"account": cli_account, "region": cli_region, **given}
            if cli_account is None or cli_region is None:  # environment-agnostic sandbox
                given.update(account=None, region=None)
        return dataclasses.replace(env, **given).validate()

    return {env.name: configured(env) for env in (dev, staging, prod)}
