"""The cost model: prices with their sources, quantities from the environment configuration,
the per-machine figure against the case study, and the `iiot cost` command."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from config.environments import environments
from local_platform.cli import app
from local_platform.report.cost import (
    CASE_STUDY_MACHINES,
    CASE_STUDY_MONTHLY_USD,
    GOAL_PER_MACHINE_USD,
    PRICES_PATH,
    SECONDS_PER_MONTH,
    PriceError,
    estimate,
    estimate_environment,
    load_prices,
    runs_per_month,
)

runner = CliRunner()


def test_every_price_names_its_source_and_how_sure_it_is():
    book = load_prices()
    assert book.region == "us-east-1"
    assert book.checked_on
    for key, price in book.prices.items():
        assert price.source.startswith("https://aws.amazon.com/"), key
        assert price.status in {"confirmed", "third-party", "unconfirmed", "estimate"}
        if price.status == "third-party":
            assert price.seen_in, key
        if price.status == "estimate":
            assert price.note, key


def test_a_price_without_source_is_refused(tmp_path: Path):
    raw = yaml.safe_load(PRICES_PATH.read_text())
    del raw["prices"]["lambda_requests"]["source"]
    bad = tmp_path / "prices.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(PriceError, match="lambda_requests: missing source"):
        load_prices(bad)


def test_tiers_charge_each_band_at_its_rate():
    messages = load_prices()["iot_core_messages"]
    assert messages.tiered(0.5e9, 1e6) == pytest.approx(500.0)
    # 1B at $1.00/M, then 4B at $0.80/M, then 1B at $0.70/M
    assert messages.tiered(6e9, 1e6) == pytest.approx(1000 + 3200 + 700)


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("cron(0 * * * ? *)", 730),
        ("cron(0 2 * * ? *)", 730 / 24),
        ("cron(0 4 ? * MON *)", 730 / 24 / 7),
        ("cron(*/15 * * * ? *)", 4 * 730),
    ],
)
def test_schedules_are_counted_per_month(cron, expected):
    assert runs_per_month(cron) == pytest.approx(expected)


def test_lines_add_up_and_quantities_follow_the_configuration():
    prod = estimate_environment("prod")
    assert prod.machines == 10_000  # 1M readings/s, 100 sensors a machine (reference workload)
    assert prod.gateways == 50
    assert prod.total == pytest.approx(sum(line.usd_month for line in prod.lines))
    assert sum(prod.by_service().values()) == pytest.approx(prod.total)
    env = environments({})["prod"]
    flink = next(line for line in prod.lines if line.price_key == "flink_kpu_hour")
    assert flink.quantity == (env.flink_parallelism + 1) * 730
    # a larger Flink application costs more: its KPUs, their storage and their logs, no more
    bigger = estimate(replace(env, flink_parallelism=16), load_prices())
    delta = bigger.by_service()["Managed Flink"] - prod.by_service()["Managed Flink"]
    more = 16 - env.flink_parallelism
    assert delta == pytest.approx(more * 730 * 0.11 + more * 50 * 0.10)
    changed = {
        service
        for service, usd in bigger.by_service().items()
        if usd != pytest.approx(prod.by_service()[service])
    }
    assert changed == {"Managed Flink", "CloudWatch"}


def test_provisioned_streams_pay_for_the_shards_the_workload_needs():
    staging = environments({})["staging"]
    shards = staging.stream_sizing().shards
    lines = estimate(staging, load_prices()).lines
    shard_hours = next(line for line in lines if line.price_key == "kinesis_shard_hour")
    assert shard_hours.quantity == shards * 730


def test_iot_core_meters_batches_in_5kb_units():
    prod = environments({})["prod"]
    lines = estimate(prod, load_prices()).lines
    messages = next(line for line in lines if line.price_key == "iot_core_messages")
    batches = prod.workload.readings_per_second / prod.workload.readings_per_batch
    # 2000 readings x 2.71 B (measured) + 36 B header = 5,456 B: two 5 KB units
    assert messages.quantity > batches * SECONDS_PER_MONTH * 2
    assert messages.quantity < batches * SECONDS_PER_MONTH * 2.01


def test_prod_per_machine_against_the_case_study_and_the_goal():
    deployed = estimate_environment("prod")
    figures = deployed.to_dict()
    assert figures["case_study"]["total_divided_by_machines"] == pytest.approx(
        CASE_STUDY_MONTHLY_USD / CASE_STUDY_MACHINES, abs=0.01
    )
    # Flink reads the compact batches itself (an enhanced fan-out consumer of the telemetry
    # stream): no per-reading stream, and prod is far under the goal
    assert not any("readings stream" in line.item for line in deployed.lines)
    assert deployed.per_machine < GOAL_PER_MACHINE_USD / 2
    assert figures["meets_goal"]
    kinesis = deployed.by_service()["Kinesis"]
    assert kinesis < 0.05 * deployed.total  # the stream is no longer what the bill is about
    efo = next(
        line for line in deployed.lines if line.price_key == "kinesis_efo_consumer_shard_hour"
    )
    assert efo.quantity == environments({})["prod"].stream_sizing().shards * 730
    assert any("writes/s" in warning for warning in deployed.capacity_warnings)


def test_dev_costs_hundreds_not_thousands():
    dev = estimate_environment("dev")
    assert 100 < dev.total < 2000
    assert math.isclose(dev.per_machine, dev.total / 20)


def test_cost_command_table_json_and_errors(tmp_path: Path):
    result = runner.invoke(app, ["cost", "--env", "prod"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "per machine" in result.output
    assert "$163,740/month" in result.output
    figures = json.loads(runner.invoke(app, ["cost", "--env", "dev", "--json"]).output)
    assert figures["environment"] == "dev"
    assert {"service", "item", "quantity", "unit", "usd_month", "price_key"} <= set(
        figures["lines"][0]
    )
    wrong = runner.invoke(app, ["cost", "--env", "qa"])
    assert wrong.exit_code == 2
    missing = runner.invoke(app, ["cost", "--prices", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 1
    assert "none.yaml" in missing.output
    assert runner.invoke(app, ["cost", "--help"]).exit_code == 0
