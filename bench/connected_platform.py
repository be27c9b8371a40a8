"""The connected platform's throughput and latencies, measured through its whole path.

One connected run (`local_platform/connected`) without faults: the simulated sensors publish
over MQTT in accelerated time, the gateways' SensorBuffers store and upload, the IoT rules put
the batches on moto's Kinesis, the real Lambda handlers write InfluxDB and route alerts, the
Flink SQL rules run on PyFlink, and `iiot lake run` builds silver on a schedule. Figures:

* readings_per_s: readings the sensors published per wall second of the live run, which the
  platform carried to silver, InfluxDB and the rules without falling behind (the run fails
  when any count does not reconcile);
* sensor_to_alert_p50_ms / p99_ms: from a reading's publication (the sensors publish when the
  simulated clock reaches its timestamp) to the alert router's decision, for every alert sent
  live (edge thresholds through the gateways, stream rules through Flink);
* sensor_to_silver_p50_s: from publication to the end of the lake run that put the reading in
  silver (the lake runs every 12 s, each run taking what it takes on this machine).

    python bench/connected_platform.py [--hours 24] [--factories 2] [--machines 10] [--rate 20000]

The last line is JSON with the four figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from local_platform.connected.plan import Faults, Plan
from local_platform.connected.runner import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--factories", type=int, default=2)
    parser.add_argument("--machines", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20_000.0, help="readings/s published")
    parser.add_argument("--history-hours", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="iiot-bench-platform-") as tmp:
        plan = Plan(
            work_dir=Path(tmp),
            factories=args.factories,
            machines_per_factory=args.machines,
            hours=args.hours,
            history_hours=args.history_hours,
            readings_per_s=args.rate,
            faults=Faults(enabled=False),
            model_lifecycle=False,  # the data path's figures; `make demo` runs the models too
        )
        document = run(plan)
    platform = document["platform"]
    if not document["ok"]:
        raise SystemExit(f"the run does not reconcile: {document['failed']}")
    alerts = platform["sensor_to_alert_ms"] or {}
    figures = {
        "readings_per_s": platform["readings_per_s_published"],
        "sensor_to_alert_p50_ms": round(alerts["p50"]) if alerts.get("p50") is not None else None,
        "sensor_to_alert_p99_ms": round(alerts["p99"]) if alerts.get("p99") is not None else None,
        "sensor_to_silver_p50_s": platform["sensor_to_silver_s"]["p50"],
    }
    print(
        f"{platform['readings_published']:,} readings published in {platform['live_wall_s']} s "
        f"({figures['readings_per_s']:,}/s), {alerts.get('alerts', 0)} live alerts, reconciled "
        f"in {document['seconds']} s"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
