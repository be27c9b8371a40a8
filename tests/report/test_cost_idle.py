"""What an environment costs left running with no workload (`iiot cost --env ENV --idle`):
the standing charges of the configured estimate, the scheduled runs with nothing new, and
nothing that only traffic, gateways, queries or users cause."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from config.environments import environments
from local_platform.cli import app
from local_platform.report.cost import (
    IDLE_NOT_BILLED,
    estimate,
    estimate_idle,
    load_prices,
    runs_per_month,
)

runner = CliRunner()
# Lines that only readings, gateways, warehouse queries or signed-in users cause.
TRAFFIC_PRICES = {
    "iot_core_messages",
    "iot_core_connection_minutes",
    "iot_core_rules_triggered",
    "iot_core_actions_executed",
    "kinesis_put_payload_units",
    "kinesis_on_demand_data_in",
    "kinesis_on_demand_data_out",
    "firehose_ingestion",
    "lambda_requests",
    "lambda_arm_gb_second",
    "dynamodb_write_request_units",
    "s3_standard",
    "s3_standard_ia",
    "s3_glacier_flexible",
    "redshift_serverless_rpu_hour",
    "greengrass_core_device",
    "grafana_editor",
    "grafana_viewer",
    "cloudwatch_logs_ingestion",
    "vpc_interface_endpoint_data",
}


@pytest.mark.parametrize("name", ["dev", "staging", "prod"])
def test_idle_keeps_the_standing_charges_and_nothing_traffic_causes(name: str) -> None:
    book = load_prices()
    env = environments({})[name]
    configured = estimate(env, book)
    idle = estimate_idle(env, book)
    keys = {line.price_key for line in idle.lines}
    assert not keys & TRAFFIC_PRICES
    # The always-on capacity is what the configured estimate charges, line for line.
    standing = {"influxdb_instance_hour", "flink_kpu_hour", "vpc_interface_endpoint_hour"}
    assert standing <= keys
    for line in configured.lines:
        if line.price_key in standing:
            assert line in idle.lines
    assert 0 < idle.total < configured.total
    assert (idle.machines, idle.gateways, idle.readings_per_second) == (0, 0, 0)


def test_idle_does_not_grow_with_the_workload() -> None:
    book = load_prices()
    env = environments({})["dev"]
    busier = replace(env, workload=replace(env.workload, readings_per_second=10_000))
    assert estimate(busier, book).total > estimate(env, book).total
    idle_lines = {line.price_key: line.usd_month for line in estimate_idle(env, book).lines}
    busier_lines = {line.price_key: line.usd_month for line in estimate_idle(busier, book).lines}
    # Stream shards and Flink's KPUs are capacity sized for the configured peak (idle or
    # not); everything else stays put.
    sized_for_the_peak = {
        "kinesis_shard_hour",
        "kinesis_extended_retention_shard_hour",
        "flink_kpu_hour",
        "flink_running_storage",
    }
    for key in idle_lines.keys() - sized_for_the_peak:
        assert busier_lines[key] == pytest.approx(idle_lines[key]), key


def test_the_lake_still_runs_on_its_schedule_with_nothing_new() -> None:
    book = load_prices()
    prod = environments({})["prod"]
    runs = runs_per_month(prod.lake.schedule_cron)
    assert runs == pytest.approx(730, rel=0.01)  # hourly
    (vcpu,) = [
        line for line in estimate_idle(prod, book).lines
        if line.price_key == "emr_serverless_arm_vcpu_hour"
    ]  # fmt: skip
    assert vcpu.quantity == pytest.approx(runs * float(book.use("lake_run_overhead_vcpu_hours")))


def test_the_command_prints_the_idle_bill() -> None:
    result = runner.invoke(app, ["--no-log-json", "cost", "--env", "staging", "--idle", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    idle = estimate_idle(environments({})["staging"], load_prices())
    assert figures["design"] == "idle"
    assert figures["total_usd_month"] == pytest.approx(round(idle.total, 2))
    assert figures["not_billed_when_idle"] == IDLE_NOT_BILLED
    table = runner.invoke(app, ["--no-log-json", "cost", "--env", "dev", "--idle"])
    assert table.exit_code == 0
    assert "dev idle: $" in table.stdout
