"""config/environments.py: sizing from the workload, and validation that names the problem."""

from __future__ import annotations

import dataclasses

import pytest

from config.environments import (
    METRICS_CATALOG,
    WIRE_BYTES_PER_READING,
    ConfigError,
    LayerLifecycle,
    Workload,
    artifact_pins,
    environments,
    size_stream,
)


def test_shards_follow_the_largest_of_the_record_and_byte_limits() -> None:
    # 1M readings/s in 2000-reading batches at 6 B: 500 records/s, 6 MB/s in, and 6 MB/s out
    # to each of two polling consumers (12 MB/s against 2 MB/s a shard) -> bytes out decide.
    workload = Workload(
        readings_per_second=1_000_000, readings_per_batch=2000, bytes_per_reading=6, headroom=1.0
    )
    fast_decode = {"decode_events_per_subtask": 500_000}  # 2 shards' worth: not deciding here
    sizing = size_stream(workload, **fast_decode)
    assert (sizing.shards_by_records, sizing.shards_by_bytes_in) == (0.5, 6.0)
    assert (sizing.shards_by_bytes_out, sizing.shards_by_decode) == (6.0, 2.0)
    assert sizing.shards == 6
    assert size_stream(workload, polling_consumers=3, **fast_decode).shards == 9  # 18 MB/s out
    # The source decodes: one subtask per shard at 100K/s -> decode decides, a slot per shard.
    slow_decode = size_stream(workload, decode_events_per_subtask=100_000, events_per_slot=1e9)
    assert (slow_decode.shards, slow_decode.parallelism) == (10, 10)
    # Tiny batches: 10K records/s -> records decide.
    chatty = Workload(
        readings_per_second=10_000, readings_per_batch=1, bytes_per_reading=6, headroom=1.0
    )
    assert size_stream(chatty).shards == 10
    tiny = Workload(readings_per_second=1, readings_per_batch=1, bytes_per_reading=1)
    assert size_stream(tiny).shards == 1


def test_headroom_adds_shards_and_slots() -> None:
    workload = Workload(
        readings_per_second=1_000_000, readings_per_batch=2000, bytes_per_reading=6, headroom=1.25
    )
    settings = {"events_per_slot": 100_000, "decode_events_per_subtask": 1e9}
    sizing = size_stream(workload, **settings)
    assert sizing.shards == 8  # 7.5 MB/s
    assert sizing.parallelism == 13  # 1.25M readings/s over 100K a slot
    assert sizing.kpus == 14  # one slot a KPU, plus the orchestration KPU
    assert size_stream(workload, parallelism_per_kpu=2, **settings).kpus == 8


def test_a_fleet_workload_takes_the_measured_wire_size_of_its_batch_size() -> None:
    fleet = Workload.fleet(machines=10, sensors_per_machine=5, reading_hz=2, readings_per_batch=500)
    assert fleet.readings_per_second == 100
    assert fleet.bytes_per_reading == WIRE_BYTES_PER_READING[500]
    with pytest.raises(ConfigError, match="no measured wire size for 1234-reading batches"):
        Workload.fleet(machines=1, sensors_per_machine=1, reading_hz=1, readings_per_batch=1234)


def test_flink_parallelism_below_the_measured_need_is_refused() -> None:
    prod = environments()["prod"]
    needed = prod.stream_sizing().parallelism
    assert prod.flink_parallelism == needed
    with pytest.raises(ConfigError, match=f"below the {needed} task slots"):
        dataclasses.replace(prod, flink_parallelism=needed - 1).validate()


def test_environments_differ_only_in_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDK_DEFAULT_ACCOUNT", raising=False)
    monkeypatch.delenv("CDK_DEFAULT_REGION", raising=False)
    envs = environments()
    assert set(envs) == {"dev", "staging", "prod"}
    assert envs["prod"].kinesis_shards() == envs["prod"].stream_sizing().shards  # provisioned
    assert envs["dev"].kinesis_shards() == 1
    assert envs["prod"].keep_data_on_delete
    assert not envs["dev"].keep_data_on_delete
    assert len(envs["prod"].factories) == 50
    assert [env.sandbox for env in envs.values()] == [True, False, False]
    assert envs["prod"].influx_retention_days > envs["dev"].influx_retention_days


def test_only_the_sandbox_takes_the_cli_profiles_account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDK_DEFAULT_ACCOUNT", "111111111111")
    monkeypatch.setenv("CDK_DEFAULT_REGION", "eu-west-1")
    envs = environments()
    assert (envs["dev"].account, envs["dev"].region) == ("111111111111", "eu-west-1")
    for name in ("staging", "prod"):
        assert (envs[name].account, envs[name].region) == (None, None)
        assert not envs[name].pinned


def test_each_environment_is_pinned_by_its_own_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDK_DEFAULT_ACCOUNT", "111111111111")
    monkeypatch.setenv("CDK_DEFAULT_REGION", "eu-west-1")
    envs = environments(
        {
            "dev:account": "222222222222",
            "dev:region": "us-east-1",
            "prod:account": "333333333333",
            "prod:region": "eu-central-1",
        }
    )
    assert (envs["dev"].account, envs["dev"].region) == ("222222222222", "us-east-1")
    assert (envs["prod"].account, envs["prod"].region) == ("333333333333", "eu-central-1")
    assert envs["prod"].pinned
    assert not envs["staging"].pinned


def test_account_and_region_are_never_hard_coded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDK_DEFAULT_ACCOUNT", raising=False)
    monkeypatch.delenv("CDK_DEFAULT_REGION", raising=False)
    for env in environments().values():
        assert env.account is None
        assert env.region is None


@pytest.mark.parametrize(
    ("context", "problem"),
    [
        ({"prod:account": "1234", "prod:region": "eu-west-1"}, "12-digit AWS account id"),
        ({"prod:account": "123456789012", "prod:region": "eu-north-1"}, "is not supported"),
        ({"prod:account": "123456789012"}, "give both prod:account and prod:region"),
    ],
)
def test_a_bad_pin_is_refused_with_the_reason(context: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        environments(context)


def test_every_account_wide_name_carries_the_environment() -> None:
    for name, env in environments().items():
        assert env.prefix == f"iiot-{name}"
        assert env.cloud_topic("factory/anomalies") == f"iiot/{name}/factory/anomalies"
        assert env.component_name("com.iiot.SensorBuffer") == f"com.iiot.{name}.SensorBuffer"
        assert env.gateway_metrics_namespace == f"IIoT/{name}/Gateway"
        assert env.metrics_namespace == f"IIoT/{name}"


def test_artifact_pins_are_validated_and_required_with_the_command() -> None:
    pins = artifact_pins({"pins:emr_image_digest": "sha256:" + "a" * 64, "dev:alarm_email": ""})
    assert pins.require_emr_image_digest("public.ecr.aws/x") == "sha256:" + "a" * 64
    with pytest.raises(
        ConfigError, match=r"-Dartifact=g:a:1 -DoutputDirectory=lib && sha256sum lib/a-1\.jar"
    ):
        pins.require_flink_connector_sha256("g:a:1", "a-1.jar")
    with pytest.raises(ConfigError, match=r"docker buildx imagetools inspect public\.ecr\.aws/x"):
        artifact_pins({}).require_emr_image_digest("public.ecr.aws/x")
    with pytest.raises(ConfigError, match="must be sha256:<64 hex>"):
        artifact_pins({"pins:emr_image_digest": "latest"})
    with pytest.raises(ConfigError, match="the pins are"):
        artifact_pins({"pins:python_digest": "sha256:" + "a" * 64})
    # Pins are not deployment inputs of an environment: they leave the environments alone.
    assert environments({"pins:flink_connector_sha256": "b" * 64})["dev"].alarm_email is None


@pytest.mark.parametrize(
    ("lifecycle", "problem"),
    [
        (LayerLifecycle(infrequent_access_after_days=10), "at least 30 days"),
        (LayerLifecycle(infrequent_access_after_days=30, glacier_after_days=40), r"30\+ days"),
        (LayerLifecycle(glacier_after_days=90, expire_after_days=60), "must come after"),
    ],
)
def test_invalid_lifecycle_is_rejected_with_the_reason(
    lifecycle: LayerLifecycle, problem: str
) -> None:
    dev = environments()["dev"]
    broken = dataclasses.replace(dev, lake=dataclasses.replace(dev.lake, bronze=lifecycle))
    with pytest.raises(ConfigError, match=problem) as error:
        broken.validate()
    assert "bronze" in str(error.value)


def test_bad_factory_ids_are_rejected() -> None:
    dev = environments()["dev"]
    with pytest.raises(ConfigError, match="factory id 'plant 1'"):
        dataclasses.replace(dev, factories=("plant 1",)).validate()
    with pytest.raises(ConfigError, match="unique"):
        dataclasses.replace(dev, factories=("a", "a")).validate()


def test_deploy_inputs_arrive_as_context_keys_per_environment() -> None:
    envs = environments(
        {
            "prod:alarm_email": "ops@example.com",
            "dev:edge_model_version": "1.0.7",
            "dev:edge_anomaly_model_version": "1.0.4",
            "staging:metrics_catalog": "config/metrics.yaml",
            # CDK's own context is not an input.
            "@aws-cdk/core:checkSecretUsage": True,
            "aws:cdk:enable-path-metadata": True,
        }
    )
    assert envs["prod"].alarm_email == "ops@example.com"
    assert envs["dev"].alarm_email is None
    assert envs["dev"].edge_model_version == "1.0.7"
    assert envs["prod"].edge_model_version is None
    assert envs["dev"].edge_anomaly_model_version == "1.0.4"
    assert envs["prod"].edge_anomaly_model_version is None
    assert envs["staging"].metrics_catalog == METRICS_CATALOG


def test_without_inputs_the_defaults_hold_and_environment_variables_change_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The variables that used to set these: the stacks read no environment variable now.
    monkeypatch.setenv("IIOT_ALARM_EMAIL", "ops@example.com")
    monkeypatch.setenv("IIOT_EDGE_MODEL_VERSION_PROD", "1.0.7")
    monkeypatch.setenv("IIOT_METRICS_CATALOG", "/nowhere/metrics.yaml")
    for env in environments().values():
        assert (env.alarm_email, env.edge_model_version) == (None, None)
        assert env.edge_anomaly_model_version is None
        assert env.metrics_catalog == METRICS_CATALOG
    # An empty value leaves the default (`-c prod:edge_model_version=` takes the model out).
    assert environments({"prod:edge_model_version": ""})["prod"].edge_model_version is None


@pytest.mark.parametrize(
    ("context", "problem"),
    [
        ({"edge_model_version": "1.0.7"}, "'edge_model_version' names no environment"),
        ({"prod:edge_model_versoin": "1.0.7"}, "'edge_model_versoin' is not a deployment input"),
        ({"prod:edge_model_version": 7}, "'prod:edge_model_version' must be text"),
        ({"prod:edge_model_version": "1.0"}, r"\(context prod:edge_model_version\) must be"),
        (
            {"prod:edge_model_version": "1.0.7", "prod:edge_anomaly_model_version": "4"},
            r"\(context prod:edge_anomaly_model_version\) must be",
        ),
        # The predictor depends on both model components: they are pinned together.
        (
            {"prod:edge_anomaly_model_version": "1.0.4"},
            r"\(context prod:edge_anomaly_model_version\) needs edge_model_version",
        ),
        (
            {"prod:edge_model_version": "1.0.7"},
            r"\(context prod:edge_model_version\) needs edge_anomaly_model_version",
        ),
        ({"prod:alarm_email": "ops"}, r"\(context prod:alarm_email\) is not an email"),
        ({"dev:metrics_catalog": "config/none.yaml"}, r"\(context dev:metrics_catalog\) is not a"),
    ],
)
def test_invalid_deploy_inputs_are_rejected_naming_the_key(
    context: dict[str, object], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        environments(context)


def test_alert_subscriptions_are_typed_lists_in_every_environment() -> None:
    envs = environments(
        {
            "staging:alert_emails": "a@example.com, b@example.com",
            "staging:alert_https": "https://hooks.example.com/x",
            "dev:escalation_emails": "c@example.com",
        }
    )
    assert envs["staging"].alert_emails == ("a@example.com", "b@example.com")
    assert envs["staging"].alert_https == ("https://hooks.example.com/x",)
    assert envs["dev"].escalation_emails == ("c@example.com",)
    assert envs["prod"].alert_emails == ()
    with pytest.raises(ConfigError, match="are not email addresses"):
        environments({"prod:alert_emails": "a@example.com,not-an-address"})
    with pytest.raises(ConfigError, match=r"are not https:// URLs"):
        environments({"prod:alert_https": "http://plain.example.com"})


def test_factory_topics_and_sensor_names_carry_environment_and_factory() -> None:
    dev = environments()["dev"]
    assert dev.factory_topic("factory/sensor/data", "f1") == "iiot/dev/factory/f1/sensor/data"
    assert dev.factory_topic("factory/anomalies", "f1") == "iiot/dev/factory/f1/anomalies"
    assert dev.sensor_thing_prefix("f1") == "iiot-dev-f1-"
    assert {env.client_devices.broker for env in environments().values()} == {"moquette"}
