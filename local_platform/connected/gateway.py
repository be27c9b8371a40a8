"""A factory gateway's components, configured as a Greengrass deployment configures them.

`python -m local_platform.connected.gateway sensor-buffer|failure-predictor --plan PLAN
--factory F01 --broker mqtt://... --cloud mqtt://...` runs the real component (its code
unchanged) in the shared run loop (`edge_runtime.run`: SIGTERM stops it) with the MQTT 5
transport: readings and local topics on the factory's own broker, IoT Core publishes on the
"cloud" broker through the factory's uplink.

The configuration is what the gateway would get: the component recipe's DefaultConfiguration,
the factory deployment's merge (factory id, the catalog's thresholds; `stacks/edge_stack.py:
factory_configuration` without the environment's topic prefix, which a local run does not
have), the recipe's `{...}` placeholders resolved to this gateway's folders, and the local run's
settings for accelerated time (`LOCAL_SETTINGS`): a one-second health report and retry ceiling,
because a wall second here is half an hour of the plant's time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from iiot.catalog import load_catalog
from local_platform.connected.plan import Plan

ROOT = Path(__file__).resolve().parents[2]
FAILURE_MODEL_COMPONENT = "com.iiot.FailureModel"
ANOMALY_MODEL_COMPONENT = "com.iiot.AnomalyModel"
RECIPES = {
    "sensor-buffer": ROOT / "edge_components/com.iiot.SensorBuffer/recipe.yaml",
    "failure-predictor": ROOT / "edge_components/com.iiot.FailurePredictor/recipe.yaml",
}
LOCAL_SETTINGS: dict[str, dict[str, Any]] = {
    "sensor-buffer": {
        # The predictor's probabilities (derived series failure_probability) stay out of the
        # connected run for now. With them on (reconcile.py counts them apart from the sensors'
        # readings), a default demo at load 13-24 failed its reconciliation: the local hop from
        # the predictor to the buffer is QoS 0, and F02's buffer took 1,558 of its 1,636
        # predictions in one burst 22 s after the sensors stopped, after the final lake run
        # (silver 90 rows, InfluxDB 1,648 points). The hop needs QoS 1 with the buffer's
        # commit-then-ack, and the drain must wait for the predictors, before this goes on.
        "storePredictions": False,
        "healthIntervalSeconds": 1.0,
        "backoffMaxSeconds": 1.0,
        "synchronous": "NORMAL",
    },
    "failure-predictor": {"modelPollSeconds": 0.5, "backoffMaxSeconds": 1.0},
}


def default_configuration(component: str) -> dict[str, Any]:
    recipe = yaml.safe_load(RECIPES[component].read_text())
    configuration: dict[str, Any] = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    return configuration


def model_dir(plan: Plan, factory: str, component: str = FAILURE_MODEL_COMPONENT) -> Path:
    """Where this gateway's nucleus unpacks the deployed version of a model component (its
    `{com.iiot.FailureModel:artifacts:decompressedPath}`, or com.iiot.AnomalyModel's)."""
    return plan.gateway_dir(factory) / "packages" / component


def component_configuration(
    component: str, plan: Plan, factory: str, machines: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """The configuration the component reads on this gateway."""
    catalog = load_catalog()
    raw = default_configuration(component)
    raw.pop("accessControl", None)  # Greengrass IPC authorisation: no IPC in a local run
    raw["factoryId"] = factory
    if "thresholds" in raw:
        raw["thresholds"] = catalog.edge_threshold_config()
    if component == "sensor-buffer":
        raw["dataDir"] = str(plan.gateway_dir(factory) / "sensor_buffer")
    else:
        # The recipe's `{<component>:artifacts:decompressedPath}/...`: before a version is
        # deployed the folder is empty and the predictor runs without that model.
        raw["modelDir"] = str(model_dir(plan, factory) / "failure_model")
        raw["anomalyModelDir"] = str(
            model_dir(plan, factory, ANOMALY_MODEL_COMPONENT) / "anomaly_model"
        )
        raw["machines"] = machines or {}
        # The predictor's anomalies wait in a durable outbox while the uplink is down, and survive
        # the run's kill -9 of a gateway (a relative path would need a Greengrass work folder).
        raw["outboxPath"] = str(plan.gateway_dir(factory) / "failure_predictor" / "outbox.sqlite3")
    raw.update(LOCAL_SETTINGS[component])
    return raw


def run_sensor_buffer(raw: dict[str, Any], broker: str, cloud: str) -> None:
    from sensor_buffer.main import SensorBuffer, gateway_config

    from edge_runtime.mqtt import MqttTransport, session_client_id
    from edge_runtime.run import run_until_signalled

    catalog = load_catalog()
    config = gateway_config(raw, catalog)
    client_id = session_client_id(config.data_dir, f"sensor-buffer-{config.factory_id}")
    transport = MqttTransport(broker, cloud, client_id)
    run_until_signalled(lambda: SensorBuffer(config, transport, catalog))


def run_failure_predictor(
    raw: dict[str, Any], broker: str, cloud: str, status: Path | None = None
) -> None:
    import os
    import secrets
    import threading
    from collections import Counter

    from failure_predictor.config import PredictorConfig
    from failure_predictor.main import PredictorComponent

    from edge_runtime.mqtt import MqttTransport
    from edge_runtime.run import run_until_signalled
    from iiot import topics
    from iiot.anomaly import decode_anomaly
    from local_platform.connected.plan import write_json

    predictions: Counter[str] = Counter()
    raised: dict[str, str] = {}  # anomaly id -> type: every anomaly this process raised
    lock = threading.Lock()
    writing = threading.Lock()  # two threads write the status file (one partial file name)
    marker = b'"model_version":"'

    def write_status() -> None:
        if status is None:
            return
        with writing:
            with lock:
                document = {
                    "pid": os.getpid(),
                    "predictions": dict(predictions),
                    "anomalies": dict(raised),
                }
            write_json(status, document)

    class CountingTransport(MqttTransport):
        """The MQTT transport, counting the predictions it publishes by model version (the
        run's record of which version predicted what; the local bus is QoS 0), and recording
        each anomaly the predictor raises by id before it enters the outbox (the predictor
        publishes it on the local alerts topic first), so the reconciliation can follow every
        one to the alert router, also across a kill -9."""

        def publish_local(self, topic: str, payload: bytes) -> None:
            if topic.endswith("/predictions"):
                start = payload.find(marker) + len(marker)
                version = payload[start : payload.find(b'"', start)].decode(errors="replace")
                with lock:
                    predictions[version] += 1
            elif topic == topics.LOCAL_ALERTS:
                anomaly = decode_anomaly(payload)
                with lock:
                    raised[anomaly.anomaly_id] = anomaly.anomaly_type
                write_status()
            super().publish_local(topic, payload)

    def report(stop: threading.Event) -> None:
        while True:
            stopped = stop.wait(0.5)
            write_status()
            if stopped:
                return

    def make() -> PredictorComponent:
        config = PredictorConfig.from_mapping(raw)
        # A clean session per run, as `failure_predictor.main --mqtt` does: its state is in
        # memory and does not outlive the process.
        client_id = f"failure-predictor-{config.factory_id}-{secrets.token_hex(8)}"
        transport = CountingTransport(broker, cloud, client_id, persistent_session=False)
        return PredictorComponent(config, transport)

    done = threading.Event()
    reporter = threading.Thread(target=report, args=(done,), daemon=True)
    reporter.start()
    try:
        run_until_signalled(make)
    finally:
        done.set()
        reporter.join(5)


def main(argv: list[str] | None = None) -> int:
    from iiot import logs

    parser = argparse.ArgumentParser(description="A gateway component on MQTT brokers")
    parser.add_argument("component", choices=sorted(RECIPES))
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--factory", required=True)
    parser.add_argument("--broker", required=True, help="the gateway's own broker")
    parser.add_argument("--cloud", required=True, help="IoT Core (through the uplink)")
    parser.add_argument("--machines", type=Path, help="JSON: machine id -> model, installedOn")
    args = parser.parse_args(argv)
    logs.configure("INFO", json_format=True)
    plan = Plan.read(args.plan)
    machines = json.loads(args.machines.read_text()) if args.machines else None
    raw = component_configuration(args.component, plan, args.factory, machines)
    if args.component == "sensor-buffer":
        run_sensor_buffer(raw, args.broker, args.cloud)
    else:
        import os

        status = plan.status_dir / f"predictor-{args.factory}-{os.getpid()}.json"
        run_failure_predictor(raw, args.broker, args.cloud, status)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
