"""What an environment costs a month on AWS, by service, from its typed configuration.

Quantities come from `config/environments.py` (the workload, the Kinesis mode and retention,
the lake's schedule and lifecycle, the InfluxDB instance, Flink's parallelism, Redshift's base
capacity, the retraining schedule, the factories) and from the measured or assumed rates under
`usage:` in `config/prices.yaml`; unit prices come from the same file, each with its source and
how sure it is. The result is a list of lines (service, item, quantity, unit price, USD a
month) that `iiot cost` prints as a table or JSON, and the report shows per machine.

The model follows the data path the stacks deploy: gateways publish compact batches to IoT
Core; a rule puts them on the telemetry stream (provisioned, its shards from the environment's
sizing, config/environments.py: size_stream); Firehose lands them in the lake, the InfluxDB
writer (Lambda) writes them to Timestream for InfluxDB, and Managed Flink reads the same
batches through its own enhanced fan-out consumer (its KPUs from the same sizing), with a
one-shard dead-letter stream for the batches its decoder refuses; EMR Serverless builds bronze,
silver and gold on S3; Redshift Serverless serves the dashboards' warehouse queries; SageMaker
retrains; CloudWatch watches; Managed Grafana shows. Not counted (each under a dollar a month
at prod scale or not deployed): SNS, SQS, the alert router and the anomaly stream's data, KMS
requests, Spectrum scans of gold, S3 GET requests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from config.environments import Environment, environments

PRICES_PATH = Path(__file__).resolve().parents[2] / "config" / "prices.yaml"
SECONDS_PER_MONTH = 730 * 3600
DAYS_PER_MONTH = 730 / 24
GB = 1e9
KB = 1024

# The edge-to-cloud case study's bill (seeds/000): $163,740 a month for 10K machines, which it
# states as "$273 per machine" although 163,740 / 10,000 is $16.37.
CASE_STUDY_MONTHLY_USD = 163_740.0
CASE_STUDY_MACHINES = 10_000
CASE_STUDY_PER_MACHINE_USD = 273.0
GOAL_PER_MACHINE_USD = 27.0


class PriceError(ValueError):
    """The price file is missing, malformed or lacks a price the model needs."""


@dataclass(frozen=True)
class Price:
    key: str
    per: str
    source: str
    status: str
    usd: float | None = None
    tiers: tuple[tuple[float | None, float], ...] = ()
    by_instance: Mapping[str, float] = field(default_factory=dict)
    note: str = ""
    seen_in: str = ""

    def tiered(self, quantity: float, unit: float = 1.0) -> float:
        """Cost of `quantity` through the tiers (each tier: up to `limit` at `rate` per
        `unit`)."""
        cost, below = 0.0, 0.0
        for limit, rate in self.tiers:
            top = quantity if limit is None else min(quantity, limit)
            if top > below:
                cost += (top - below) / unit * rate
            if limit is None or quantity <= limit:
                break
            below = limit
        return cost


@dataclass(frozen=True)
class PriceBook:
    region: str
    currency: str
    checked_on: str
    prices: Mapping[str, Price]
    usage: Mapping[str, Any]
    source: str

    def __getitem__(self, key: str) -> Price:
        try:
            return self.prices[key]
        except KeyError:
            raise PriceError(f"{self.source}: no price {key!r}") from None

    def usd(self, key: str) -> float:
        value = self[key].usd
        if value is None:
            raise PriceError(f"{self.source}: price {key!r} has no usd value")
        return value

    def use(self, key: str, env: str | None = None) -> Any:
        try:
            value = self.usage[key]
        except KeyError:
            raise PriceError(f"{self.source}: no usage figure {key!r}") from None
        if isinstance(value, Mapping):
            if env is None or env not in value:
                raise PriceError(f"{self.source}: usage {key!r} has no value for {env!r}")
            return value[env]
        return value


def load_prices(path: Path = PRICES_PATH) -> PriceBook:
    """Read and check the price file; every price names its source and status."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PriceError(f"{path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise PriceError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("prices"), dict):
        raise PriceError(f"{path}: expected a mapping with 'prices' and 'usage'")
    prices: dict[str, Price] = {}
    problems = []
    for key, entry in raw["prices"].items():
        if not isinstance(entry, dict):
            problems.append(f"{key}: expected a mapping")
            continue
        missing = [name for name in ("per", "source", "status") if not entry.get(name)]
        if missing:
            problems.append(f"{key}: missing {', '.join(missing)}")
            continue
        if entry["status"] not in {"confirmed", "third-party", "unconfirmed", "estimate"}:
            problems.append(f"{key}: unknown status {entry['status']!r}")
        if entry["status"] == "third-party" and not entry.get("seen_in"):
            problems.append(f"{key}: a third-party price names the page it was seen in")
        if entry["status"] == "estimate" and not entry.get("note"):
            problems.append(f"{key}: an estimate says how it was made (note)")
        values = [name for name in ("usd", "tiers", "by_instance") if name in entry]
        if len(values) != 1:
            problems.append(f"{key}: give exactly one of usd, tiers, by_instance")
            continue
        prices[key] = Price(
            key=key,
            per=str(entry["per"]),
            source=str(entry["source"]),
            status=str(entry["status"]),
            usd=float(entry["usd"]) if "usd" in entry else None,
            tiers=tuple(
                (None if limit is None else float(limit), float(rate))
                for limit, rate in entry.get("tiers", ())
            ),
            by_instance={str(k): float(v) for k, v in entry.get("by_instance", {}).items()},
            note=" ".join(str(entry.get("note", "")).split()),
            seen_in=str(entry.get("seen_in", "")),
        )
    if problems:
        raise PriceError(f"{path}: " + "; ".join(problems))
    usage = raw.get("usage")
    if not isinstance(usage, dict):
        raise PriceError(f"{path}: expected a 'usage' mapping")
    return PriceBook(
        region=str(raw.get("region", "")),
        currency=str(raw.get("currency", "USD")),
        checked_on=str(raw.get("checked_on", "")),
        prices=prices,
        usage=usage,
        source=str(path),
    )


@dataclass(frozen=True)
class CostLine:
    service: str
    item: str
    quantity: float
    unit: str
    usd_month: float
    price_key: str


@dataclass
class Estimate:
    design: str
    environment: str
    region: str
    machines: int
    gateways: int
    readings_per_second: int
    lines: list[CostLine]
    prices_to_check: list[dict[str, str]]
    capacity_warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(line.usd_month for line in self.lines)

    @property
    def per_machine(self) -> float:
        return self.total / self.machines if self.machines else 0.0

    def by_service(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for line in self.lines:
            totals[line.service] = totals.get(line.service, 0.0) + line.usd_month
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def drivers(self, top: int = 3) -> list[dict[str, Any]]:
        """The largest lines with their share of the total."""
        total = self.total or 1.0
        ranked = sorted(self.lines, key=lambda line: -line.usd_month)[:top]
        return [
            {
                "service": line.service,
                "item": line.item,
                "usd_month": round(line.usd_month, 2),
                "share": round(line.usd_month / total, 3),
            }
            for line in ranked
        ]

    def to_dict(self) -> dict[str, Any]:
        case_per_machine_actual = CASE_STUDY_MONTHLY_USD / CASE_STUDY_MACHINES
        return {
            "design": self.design,
            "environment": self.environment,
            "region": self.region,
            "machines": self.machines,
            "gateways": self.gateways,
            "readings_per_second": self.readings_per_second,
            "total_usd_month": round(self.total, 2),
            "per_machine_usd_month": round(self.per_machine, 2),
            "goal_per_machine_usd_month": GOAL_PER_MACHINE_USD,
            "meets_goal": self.per_machine <= GOAL_PER_MACHINE_USD,
            "by_service": {k: round(v, 2) for k, v in self.by_service().items()},
            "drivers": self.drivers(),
            "case_study": {
                "total_usd_month": CASE_STUDY_MONTHLY_USD,
                "machines": CASE_STUDY_MACHINES,
                "stated_per_machine_usd_month": CASE_STUDY_PER_MACHINE_USD,
                "total_divided_by_machines": round(case_per_machine_actual, 2),
                "note": "the case study states $273/machine, but $163,740 / 10,000 machines "
                "is $16.37",
            },
            "lines": [
                {**asdict(line), "usd_month": round(line.usd_month, 2)} for line in self.lines
            ],
            "prices_to_check": self.prices_to_check,
            "capacity_warnings": self.capacity_warnings,
        }


def runs_per_month(cron: str) -> float:
    """How often an EventBridge cron(min hour day month weekday year) fires in a month."""
    match = re.fullmatch(r"cron\((.+)\)", cron.strip())
    fields = match.group(1).split() if match else []
    if len(fields) != 6:
        raise ValueError(f"{cron!r} is not an EventBridge cron(...) expression")
    minute, hour, day, _month, weekday, _year = fields

    def count(spec: str, span: int) -> float:
        if spec in {"*", "?"}:
            return span
        if spec.startswith("*/") or "/" in spec:
            return span / int(spec.split("/")[1])
        return len(spec.split(","))

    per_day = count(minute, 60) * count(hour, 24) if minute != "*" else 60 * count(hour, 24)
    if weekday not in {"*", "?"}:
        days = count(weekday.replace("MON-FRI", "1,2,3,4,5"), 7) * 730 / 24 / 7
    elif day not in {"*", "?"}:
        days = count(day, 31) * 730 / 24 / 30.4
    else:
        days = DAYS_PER_MONTH
    return per_day * days


def _tiered_gb_months(monthly_gb: float, lifecycle: Any, horizon_months: int) -> dict[str, float]:
    """GB held in each storage class in month `horizon_months`, for a layer that receives
    `monthly_gb` a month and moves through `lifecycle` (LayerLifecycle) by age."""
    held = {"standard": 0.0, "ia": 0.0, "glacier": 0.0}
    for age_month in range(horizon_months):
        age_days = (age_month + 0.5) * 730 / 24
        if lifecycle.expire_after_days is not None and age_days >= lifecycle.expire_after_days:
            continue
        if lifecycle.glacier_after_days is not None and age_days >= lifecycle.glacier_after_days:
            held["glacier"] += monthly_gb
        elif (
            lifecycle.infrequent_access_after_days is not None
            and age_days >= lifecycle.infrequent_access_after_days
        ):
            held["ia"] += monthly_gb
        else:
            held["standard"] += monthly_gb
    return held


def estimate(env: Environment, prices: PriceBook | None = None) -> Estimate:
    """The monthly bill of `env` at its configured workload, line by line, as the stacks
    deploy it."""
    book = prices or load_prices()
    name = env.name
    workload = env.workload
    rate = float(workload.readings_per_second)
    readings = rate * SECONDS_PER_MONTH
    machines = max(1, round(rate / float(book.use("sensors_per_machine", name))))
    gateways = len(env.factories) * int(book.use("gateways_per_factory"))
    lines: list[CostLine] = []

    def add(service: str, item: str, quantity: float, unit: str, key: str, usd: float) -> None:
        lines.append(CostLine(service, item, quantity, unit, usd, key))

    # --- IoT Core: compact batches, gateway health, anomalies
    batch_bytes = workload.readings_per_batch * workload.bytes_per_reading + float(
        book.use("batch_header_bytes")
    )
    batch_units = math.ceil(batch_bytes / (5 * KB))
    batches = readings / workload.readings_per_batch
    health = gateways * SECONDS_PER_MONTH / float(book.use("gateway_health_interval_s"))
    anomalies = machines * float(book.use("anomalies_per_machine_day")) * DAYS_PER_MONTH
    messages = batches * batch_units + health + anomalies
    add(
        "IoT Core",
        f"messages ({batch_units} x 5 KB units per {batch_bytes / KB:.1f} KB batch, health, "
        "anomalies)",
        messages,
        "messages",
        "iot_core_messages",
        book["iot_core_messages"].tiered(messages, 1e6),
    )
    minutes = gateways * 730 * 60
    add(
        "IoT Core",
        "gateway connection-minutes",
        minutes,
        "minutes",
        "iot_core_connection_minutes",
        minutes / 1e6 * book.usd("iot_core_connection_minutes"),
    )
    rules = batches * batch_units + health + anomalies
    add(
        "IoT Core",
        "rules triggered (telemetry, health, anomaly rules)",
        rules,
        "rules",
        "iot_core_rules_triggered",
        rules / 1e6 * book.usd("iot_core_rules_triggered"),
    )
    actions = batches * batch_units + 2 * health + anomalies  # health: two metric actions
    add(
        "IoT Core",
        "rule actions (Kinesis puts, CloudWatch metrics)",
        actions,
        "actions",
        "iot_core_actions_executed",
        actions / 1e6 * book.usd("iot_core_actions_executed"),
    )

    # --- Kinesis: telemetry (compact batches; Firehose and the writer poll it, Flink reads
    # it through an enhanced fan-out consumer), the rules' dead letters
    retention_h = env.kinesis_retention_hours
    record_gb = batches * batch_bytes / GB
    shards = env.stream_sizing().shards  # what on-demand scales to: sizes the Lambda's pollers
    if env.kinesis_capacity == "provisioned":
        add(
            "Kinesis",
            f"telemetry stream: {shards} provisioned shards",
            shards * 730,
            "shard-hours",
            "kinesis_shard_hour",
            shards * 730 * book.usd("kinesis_shard_hour"),
        )
        units = batches * math.ceil(batch_bytes / (25 * KB))
        add(
            "Kinesis",
            "telemetry stream: PUT payload units",
            units,
            "units",
            "kinesis_put_payload_units",
            units / 1e6 * book.usd("kinesis_put_payload_units"),
        )
        if retention_h > 24:
            add(
                "Kinesis",
                f"telemetry stream: retention {retention_h} h",
                shards * 730,
                "shard-hours",
                "kinesis_extended_retention_shard_hour",
                shards * 730 * book.usd("kinesis_extended_retention_shard_hour"),
            )
        add(
            "Kinesis",
            f"telemetry stream: Flink's enhanced fan-out consumer ({shards} shards)",
            shards * 730,
            "consumer-shard-hours",
            "kinesis_efo_consumer_shard_hour",
            shards * 730 * book.usd("kinesis_efo_consumer_shard_hour"),
        )
        add(
            "Kinesis",
            "telemetry stream: enhanced fan-out data retrieved",
            record_gb,
            "GB",
            "kinesis_efo_data_retrieval",
            record_gb * book.usd("kinesis_efo_data_retrieval"),
        )
    else:
        lines.extend(
            _on_demand_stream(
                book,
                "telemetry stream",
                batches,
                batch_bytes,
                consumers=3,  # Firehose, the InfluxDB writer, Flink
                retention_h=retention_h,
            )
        )
    add(
        "Kinesis",
        "stream rules' dead-letter stream: 1 shard, 7 days",
        730,
        "shard-hours",
        "kinesis_shard_hour",
        730 * (book.usd("kinesis_shard_hour") + book.usd("kinesis_extended_retention_shard_hour")),
    )

    # --- Firehose: telemetry -> landing
    firehose_gb = batches * math.ceil(batch_bytes / (5 * KB)) * 5 * KB / GB
    add(
        "Firehose",
        "telemetry -> lake landing (records rounded to 5 KB)",
        firehose_gb,
        "GB",
        "firehose_ingestion",
        firehose_gb * book.usd("firehose_ingestion"),
    )

    # --- Lambda + DynamoDB: the InfluxDB writer
    per_invocation = float(book.use("writer_records_per_invocation"))
    # each poller (2 per shard) invokes at least once a second when records flow
    invocations = max(batches / per_invocation, shards * 2 * SECONDS_PER_MONTH)
    add(
        "Lambda",
        "InfluxDB writer invocations",
        invocations,
        "requests",
        "lambda_requests",
        invocations / 1e6 * book.usd("lambda_requests"),
    )
    gb_seconds = (readings / float(book.use("writer_readings_per_lambda_second"))) * float(
        book.use("writer_memory_gb")
    )
    add(
        "Lambda",
        "InfluxDB writer compute (arm64)",
        gb_seconds,
        "GB-seconds",
        "lambda_arm_gb_second",
        gb_seconds * book.usd("lambda_arm_gb_second"),
    )
    add(
        "DynamoDB",
        "writer idempotency (one write per telemetry record)",
        batches,
        "write units",
        "dynamodb_write_request_units",
        batches / 1e6 * book.usd("dynamodb_write_request_units"),
    )

    # --- Timestream for InfluxDB
    instance_price = book["influxdb_instance_hour"].by_instance.get(env.influx_instance_type)
    if instance_price is None:
        raise PriceError(
            f"{book.source}: no influxdb_instance_hour price for {env.influx_instance_type}"
        )
    copies = 2 if env.influx_multi_az else 1
    add(
        "Timestream for InfluxDB",
        f"{env.influx_instance_type}{' Multi-AZ' if env.influx_multi_az else ''}",
        730 * copies,
        "instance-hours",
        "influxdb_instance_hour",
        730 * copies * instance_price,
    )
    add(
        "Timestream for InfluxDB",
        f"storage {env.influx_storage_gib} GiB",
        env.influx_storage_gib * copies,
        "GiB-months",
        "influxdb_storage",
        env.influx_storage_gib * copies * book.usd("influxdb_storage"),
    )

    # --- Managed Flink
    kpus = math.ceil(env.flink_parallelism / env.flink_parallelism_per_kpu) + 1
    add(
        "Managed Flink",
        f"{kpus} KPUs (parallelism {env.flink_parallelism} + orchestration)",
        kpus * 730,
        "KPU-hours",
        "flink_kpu_hour",
        kpus * 730 * book.usd("flink_kpu_hour"),
    )
    add(
        "Managed Flink",
        "running application storage (50 GB per KPU)",
        (kpus - 1) * 50,
        "GB-months",
        "flink_running_storage",
        (kpus - 1) * 50 * book.usd("flink_running_storage"),
    )

    # --- S3: the lake in month N of operation
    horizon = int(book.use("storage_horizon_months"))
    monthly = {
        "bronze": readings * workload.bytes_per_reading / GB,
        "silver": readings * float(book.use("silver_bytes_per_reading")) / GB,
    }
    held = {"standard": 0.0, "ia": 0.0, "glacier": 0.0}
    for layer, monthly_gb in monthly.items():
        for tier, gb in _tiered_gb_months(monthly_gb, getattr(env.lake, layer), horizon).items():
            held[tier] += gb
    landing_gb = monthly["bronze"] * env.lake.landing_expire_after_days / DAYS_PER_MONTH
    held["standard"] += landing_gb
    add(
        "S3",
        f"lake in S3 Standard, month {horizon} (landing, bronze, silver)",
        held["standard"],
        "GB-months",
        "s3_standard",
        book["s3_standard"].tiered(held["standard"]),
    )
    add(
        "S3",
        f"lake in Standard-IA, month {horizon}",
        held["ia"],
        "GB-months",
        "s3_standard_ia",
        held["ia"] * book.usd("s3_standard_ia"),
    )
    add(
        "S3",
        f"lake in Glacier Flexible Retrieval, month {horizon}",
        held["glacier"],
        "GB-months",
        "s3_glacier_flexible",
        held["glacier"] * book.usd("s3_glacier_flexible"),
    )
    lake_runs = runs_per_month(env.lake.schedule_cron)
    # Firehose writes a file per buffer (300 s or 128 MB); the lake writes a few per run
    puts = max(SECONDS_PER_MONTH / 300, monthly["bronze"] * GB / 128e6) + lake_runs * 200
    add(
        "S3",
        "PUT requests (Firehose files, lake commits)",
        puts,
        "requests",
        "s3_put_requests",
        puts / 1000 * book.usd("s3_put_requests"),
    )

    # --- EMR Serverless: bronze -> silver -> gold
    throughput = float(book.use("lake_readings_per_vcpu_second"))
    overhead = float(book.use("lake_run_overhead_vcpu_hours"))
    vcpu_hours = readings / throughput / 3600 + lake_runs * overhead
    add(
        "EMR Serverless",
        f"lake runs ({lake_runs:.0f} a month), vCPU",
        vcpu_hours,
        "vCPU-hours",
        "emr_serverless_arm_vcpu_hour",
        vcpu_hours * book.usd("emr_serverless_arm_vcpu_hour"),
    )
    memory_hours = vcpu_hours * float(book.use("lake_memory_gb_per_vcpu"))
    add(
        "EMR Serverless",
        "lake runs, memory",
        memory_hours,
        "GB-hours",
        "emr_serverless_arm_gb_hour",
        memory_hours * book.usd("emr_serverless_arm_gb_hour"),
    )

    # --- Redshift Serverless
    rpu_hours = (
        env.redshift_base_rpu
        * float(book.use("redshift_active_hours_per_day", name))
        * DAYS_PER_MONTH
    )
    add(
        "Redshift Serverless",
        f"{env.redshift_base_rpu} RPU x {book.use('redshift_active_hours_per_day', name)} h a "
        "day (dashboard queries)",
        rpu_hours,
        "RPU-hours",
        "redshift_serverless_rpu_hour",
        rpu_hours * book.usd("redshift_serverless_rpu_hour"),
    )

    # --- SageMaker: retraining
    retraining = getattr(env, "retraining", None)
    retrain_runs = runs_per_month(retraining.schedule_cron) if retraining else DAYS_PER_MONTH
    if retraining is not None and retraining.on_new_silver:
        retrain_runs += lake_runs
    instance_hours = retrain_runs * float(book.use("sagemaker_hours_per_run"))
    add(
        "SageMaker",
        f"retraining ({retrain_runs:.0f} pipeline runs a month)",
        instance_hours,
        "instance-hours",
        "sagemaker_ml_m5_xlarge_hour",
        instance_hours * book.usd("sagemaker_ml_m5_xlarge_hour"),
    )

    # --- Greengrass
    add(
        "Greengrass",
        "active core devices (one gateway per factory)",
        gateways,
        "devices",
        "greengrass_core_device",
        gateways * book.usd("greengrass_core_device"),
    )

    # --- CloudWatch
    metrics = gateways * 2 + int(book.use("platform_metrics"))
    add(
        "CloudWatch",
        "metrics (gateway backlog and age per gateway, functions)",
        metrics,
        "metrics",
        "cloudwatch_custom_metric",
        metrics * book.usd("cloudwatch_custom_metric"),
    )
    log_gb = (
        invocations * float(book.use("log_bytes_per_invocation")) / GB
        + kpus * float(book.use("flink_log_gb_per_kpu_day")) * DAYS_PER_MONTH
    )
    add(
        "CloudWatch",
        "logs ingested (functions, Flink)",
        log_gb,
        "GB",
        "cloudwatch_logs_ingestion",
        log_gb * book.usd("cloudwatch_logs_ingestion"),
    )
    stored_gb = log_gb * min(env.log_retention_days / DAYS_PER_MONTH, horizon)
    add(
        "CloudWatch",
        f"logs kept ({env.log_retention_days} days)",
        stored_gb,
        "GB-months",
        "cloudwatch_logs_storage",
        stored_gb * book.usd("cloudwatch_logs_storage"),
    )
    alarms = int(book.use("cloudwatch_alarms"))
    add(
        "CloudWatch",
        "alarms",
        alarms,
        "alarms",
        "cloudwatch_alarm",
        alarms * book.usd("cloudwatch_alarm"),
    )
    dashboards = int(book.use("cloudwatch_dashboards"))
    add(
        "CloudWatch",
        "operations dashboard",
        dashboards,
        "dashboards",
        "cloudwatch_dashboard",
        dashboards * book.usd("cloudwatch_dashboard"),
    )

    # --- VPC endpoints, secrets, Grafana
    endpoint_hours = (
        int(book.use("interface_endpoints")) * int(book.use("availability_zones")) * 730
    )
    add(
        "VPC",
        "interface endpoints (Secrets Manager, STS, SQS, Kinesis) x AZs",
        endpoint_hours,
        "endpoint-hours",
        "vpc_interface_endpoint_hour",
        endpoint_hours * book.usd("vpc_interface_endpoint_hour"),
    )
    # the writer reads the batches through the Kinesis endpoint
    add(
        "VPC",
        "data through the Kinesis endpoint (the writer's reads)",
        record_gb,
        "GB",
        "vpc_interface_endpoint_data",
        record_gb * book.usd("vpc_interface_endpoint_data"),
    )
    secrets = int(book.use("secrets"))
    add(
        "Secrets Manager",
        "InfluxDB credentials and tokens",
        secrets,
        "secrets",
        "secrets_manager_secret",
        secrets * book.usd("secrets_manager_secret"),
    )
    editors, viewers = book.use("grafana_users", name)
    add(
        "Managed Grafana",
        f"{editors} editors",
        editors,
        "licences",
        "grafana_editor",
        editors * book.usd("grafana_editor"),
    )
    add(
        "Managed Grafana",
        f"{viewers} viewers",
        viewers,
        "licences",
        "grafana_viewer",
        viewers * book.usd("grafana_viewer"),
    )

    warnings = []
    # AWS's guidance: a db.influx.2xlarge takes about 150K writes/s; capacity scales with size
    size = env.influx_instance_type.removeprefix("db.influx.")
    scale = {"medium": 0.125, "large": 0.25, "xlarge": 0.5}.get(size) or float(
        size.removesuffix("xlarge") or 1
    ) / 2
    if rate > 150_000 * scale:
        warnings.append(
            f"{env.influx_instance_type} takes about {150_000 * scale:,.0f} writes/s (AWS "
            f"guidance: 150K for a 2xlarge); {rate:,.0f} readings/s need a larger instance, "
            "several, or fewer points (downsampled hot data): not priced here"
        )
    per_connection = batches / SECONDS_PER_MONTH / max(gateways, 1)
    if per_connection > 100 or per_connection * batch_bytes > 512 * KB:
        warnings.append(
            f"{per_connection:,.0f} publishes/s per gateway exceed IoT Core's per-connection "
            "limits (100 publishes/s, 512 KiB/s): larger batches or more gateways"
        )
    used = {line.price_key for line in lines}
    to_check = [
        {"price": key, "status": book[key].status, "source": book[key].source}
        for key in sorted(used)
        if book[key].status != "confirmed"
    ]
    return Estimate(
        design="as-deployed",
        environment=name,
        region=book.region,
        machines=machines,
        gateways=gateways,
        readings_per_second=workload.readings_per_second,
        lines=lines,
        prices_to_check=to_check,
        capacity_warnings=warnings,
    )


def _on_demand_stream(
    book: PriceBook,
    name: str,
    records: float,
    record_bytes: float,
    *,
    consumers: int,
    retention_h: int,
) -> list[CostLine]:
    """An on-demand stream: hours, data in (1 KB rounding per record), data out per
    consumer, and retention beyond 24 h."""
    billed_gb = records * math.ceil(record_bytes / KB) * KB / GB
    actual_gb = records * record_bytes / GB
    lines = [
        CostLine(
            "Kinesis",
            f"{name}: on-demand stream-hours",
            730,
            "stream-hours",
            730 * book.usd("kinesis_on_demand_stream_hour"),
            "kinesis_on_demand_stream_hour",
        ),
        CostLine(
            "Kinesis",
            f"{name}: data in ({record_bytes:.0f} B records billed as "
            f"{math.ceil(record_bytes / KB)} KB)",
            billed_gb,
            "GB",
            billed_gb * book.usd("kinesis_on_demand_data_in"),
            "kinesis_on_demand_data_in",
        ),
        CostLine(
            "Kinesis",
            f"{name}: data out ({consumers} consumer{'s' if consumers > 1 else ''})",
            actual_gb * consumers,
            "GB",
            actual_gb * consumers * book.usd("kinesis_on_demand_data_out"),
            "kinesis_on_demand_data_out",
        ),
    ]
    if retention_h > 24:
        kept = actual_gb * min(retention_h - 24, 144) / 730
        lines.append(
            CostLine(
                "Kinesis",
                f"{name}: retention {retention_h} h",
                kept,
                "GB-months",
                kept * book.usd("kinesis_on_demand_extended_retention"),
                "kinesis_on_demand_extended_retention",
            )
        )
    return lines


def estimate_environment(name: str, prices_path: Path = PRICES_PATH) -> Estimate:
    """The estimate for dev, staging or prod as config/environments.py defines it (no
    deployment inputs needed)."""
    envs = environments({})
    if name not in envs:
        raise ValueError(f"unknown environment {name!r}: one of {', '.join(envs)}")
    return estimate(envs[name], load_prices(prices_path))


def cost_table(estimate: Estimate) -> Any:
    """The estimate as a rich Table: one row per line, totals and the per-machine figure."""
    from rich.table import Table

    title = (
        f"{estimate.environment}: {estimate.machines:,} machines, {estimate.gateways} gateways, "
        f"{estimate.readings_per_second:,} readings/s ({estimate.region}, {estimate.design})"
    )
    table = Table("service", "item", "quantity", "unit", "USD/month", title=title)
    for line in sorted(estimate.lines, key=lambda line: -line.usd_month):
        table.add_row(
            line.service,
            line.item,
            f"{line.quantity:,.0f}" if line.quantity >= 10 else f"{line.quantity:,.2f}",
            line.unit,
            f"{line.usd_month:,.2f}",
        )
    table.add_section()
    table.add_row("total", "", "", "", f"{estimate.total:,.2f}")
    table.add_row("per machine", "", "", "", f"{estimate.per_machine:,.2f}")
    return table


def summary_lines(as_deployed: Estimate) -> list[str]:
    """What the figures mean against the case study and the goal, in a few sentences."""
    top = as_deployed.drivers(1)[0]
    verdict = "meets" if as_deployed.per_machine <= GOAL_PER_MACHINE_USD else "misses"
    return [
        f"{as_deployed.environment}: ${as_deployed.total:,.0f}/month, "
        f"${as_deployed.per_machine:,.2f} per machine: {verdict} the goal of "
        f"${GOAL_PER_MACHINE_USD:.0f} (a tenth of the case study's stated $273).",
        f"Largest line: {top['service']} {top['item']} ({top['share']:.0%} of the total).",
        f"Case study: ${CASE_STUDY_MONTHLY_USD:,.0f}/month for {CASE_STUDY_MACHINES:,} "
        f"machines, stated as ${CASE_STUDY_PER_MACHINE_USD:.0f}/machine although the total "
        f"divided by the machines is ${CASE_STUDY_MONTHLY_USD / CASE_STUDY_MACHINES:.2f}.",
    ]


# What an environment pays left running with no workload (`iiot cost --idle`): capacity held
# by the hour whatever flows (provisioned or on-demand streams, instances, KPUs, interface
# endpoints), storage provisioned with an instance or application, what merely exists
# (secrets, alarms, dashboards), and the scheduled runs that find nothing new.
IDLE_UNITS = (
    "shard-hours",
    "consumer-shard-hours",  # the Flink rules' enhanced fan-out consumer
    "stream-hours",
    "instance-hours",
    "KPU-hours",
    "endpoint-hours",
    "secrets",
    "alarms",
    "dashboards",
)
IDLE_PROVISIONED_STORAGE = ("Timestream for InfluxDB", "Managed Flink")
IDLE_NOT_BILLED = (
    "no gateway connected (IoT Core, Greengrass), no readings (Kinesis data, Firehose, "
    "Lambda, DynamoDB, S3 growth), no warehouse query (Redshift Serverless bills only "
    "queries), no Grafana user signed in (billed per active user)"
)


def estimate_idle(env: Environment, prices: PriceBook | None = None) -> Estimate:
    """The monthly bill of `env` deployed as configured but idle: no gateway, no reading, no
    query. The standing lines are the configured estimate's own (streams and Flink stay
    sized for the configured peak); the lake and the retraining still run on their
    schedules, the lake runs with nothing new to read (their fixed overhead only)."""
    book = prices or load_prices()
    configured = estimate(env, book)
    lines = [
        line
        for line in configured.lines
        if line.unit in IDLE_UNITS
        or (line.service in IDLE_PROVISIONED_STORAGE and line.unit.endswith("-months"))
    ]
    lake_runs = runs_per_month(env.lake.schedule_cron)
    vcpu_hours = lake_runs * float(book.use("lake_run_overhead_vcpu_hours"))
    memory_hours = vcpu_hours * float(book.use("lake_memory_gb_per_vcpu"))
    lines += [
        CostLine(
            "EMR Serverless",
            f"lake runs with nothing new ({lake_runs:.0f} a month), vCPU",
            vcpu_hours,
            "vCPU-hours",
            vcpu_hours * book.usd("emr_serverless_arm_vcpu_hour"),
            "emr_serverless_arm_vcpu_hour",
        ),
        CostLine(
            "EMR Serverless",
            "lake runs with nothing new, memory",
            memory_hours,
            "GB-hours",
            memory_hours * book.usd("emr_serverless_arm_gb_hour"),
            "emr_serverless_arm_gb_hour",
        ),
    ]
    used = {line.price_key for line in lines}
    return Estimate(
        design="idle",
        environment=env.name,
        region=configured.region,
        machines=0,
        gateways=0,
        readings_per_second=0,
        lines=lines,
        prices_to_check=[p for p in configured.prices_to_check if p["price"] in used],
    )


def estimate_environment_idle(name: str, prices_path: Path = PRICES_PATH) -> Estimate:
    """`estimate_idle` for dev, staging or prod as config/environments.py defines it."""
    envs = environments({})
    if name not in envs:
        raise ValueError(f"unknown environment {name!r}: one of {', '.join(envs)}")
    return estimate_idle(envs[name], load_prices(prices_path))
