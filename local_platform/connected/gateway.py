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


def payloads_file(status: Path) -> Path:
    """Where a predictor process keeps the count of readings payloads it handled."""
    return status.with_suffix(".payloads")


def payload_count(path: Path) -> int:
    """The count one predictor process wrote to its `payloads_file` (0 before its first)."""
    return int.from_bytes(path.read_bytes()[:8] or b"\0", "little")


def handled_payloads(status_dir: Path, factory: str) -> int:
    """The readings payloads the factory's predictor processes handled, all of them (a payload
    redelivered after a kill -9 may count twice, none is missed)."""
    return sum(payload_count(path) for path in status_dir.glob(f"predictor-{factory}-*.payloads"))


def run_failure_predictor(
    raw: dict[str, Any], broker: str, cloud: str, status: Path | None = None
) -> None:
    import os
    import threading
    import time

    from failure_predictor.config import PredictorConfig
    from failure_predictor.main import LocalBusCounts, PredictorComponent

    from edge_runtime.mqtt import MqttTransport, session_client_id
    from edge_runtime.run import run_until_signalled
    from iiot import topics
    from iiot.anomaly import decode_anomaly
    from local_platform.connected.plan import write_json

    raised: dict[str, str] = {}  # anomaly id -> type: every anomaly this process raised
    lock = threading.Lock()
    writing = threading.Lock()  # two threads write the status file (one partial file name)
    running: list[PredictorComponent] = []  # the component of this process (one at a time)

    def write_status() -> None:
        if status is None:
            return
        with writing:
            bus = running[-1].counts.snapshot() if running else {}
            with lock:
                document = {
                    "pid": os.getpid(),
                    "updated": time.time(),
                    # predictions the local broker took (PUBACK), by model version: the run's
                    # record of which version predicted what
                    "predictions": bus.pop("predictions_confirmed_by_version", {}),
                    **bus,
                    "anomalies": dict(raised),
                }
            write_json(status, document)

    class CountingTransport(MqttTransport):
        """The MQTT transport, recording each anomaly the predictor raises by id before it
        enters the outbox (the predictor publishes it on the local alerts topic first), so the
        reconciliation can follow every one to the alert router, also across a kill -9."""

        def publish_local(self, topic: str, payload: bytes) -> None:
            if topic == topics.LOCAL_ALERTS:
                anomaly = decode_anomaly(payload)
                with lock:
                    raised[anomaly.anomaly_id] = anomaly.anomaly_type
                write_status()
            super().publish_local(topic, payload)

    class DurableCounts(LocalBusCounts):
        """Also writes the readings payloads handled to `<status>.payloads` (8 bytes, one
        write per payload, into the page cache): a kill -9 cannot lose that count, and the
        payload it may miss (killed between the two) was not acknowledged either, so the
        broker redelivers it to the next process. The sum over the factory's processes then
        reaches the sensors' message count exactly when every message was handled."""

        def __init__(self, path: Path) -> None:
            super().__init__()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

        def handled_readings(self) -> None:
            super().handled_readings()
            os.pwrite(self._fd, self.readings_payloads.to_bytes(8, "little"), 0)

    def report(stop: threading.Event) -> None:
        while True:
            stopped = stop.wait(0.5)
            write_status()
            if stopped:
                return

    def make() -> PredictorComponent:
        config = PredictorConfig.from_mapping(raw)
        # A persistent session on the gateway's broker, kept across a kill -9 and restart (the
        # id is kept next to the outbox): the readings published while the predictor is down
        # wait for it, so every reading the sensors sent reaches a predictor and the run can
        # tell when the predictors are done (their payload count reaches the sensors').
        client_id = session_client_id(
            Path(config.outbox_path).parent, f"failure-predictor-{config.factory_id}"
        )
        transport = CountingTransport(broker, cloud, client_id)
        component = PredictorComponent(config, transport)
        if status is not None:
            component.counts = DurableCounts(payloads_file(status))
        running.append(component)
        return component

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
