"""One factory's sensors: the live hours of the simulated fleet, published in accelerated time.

`python -m local_platform.connected.sensors --plan PLAN --factory F01 ...` publishes each
machine's readings of one instant as one JSON message on `factory/F01/readings` of the
factory's own broker (QoS 1), when the shared simulated clock reaches their timestamp; a share
of the messages is malformed (the plan's rate). It writes its progress to
`status/sensors-F01.json` and, at the end, what it published: readings, messages, malformed
payloads by kind, and how far behind the clock it fell.

`factory_messages` is the one definition of what a factory's sensors send: the reconciliation
and the late-data comparison regenerate the same messages from the same seed.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from iiot.catalog import load_catalog
from local_platform.connected.clock import SimClock
from local_platform.connected.plan import Plan, write_json
from local_platform.publisher import MqttWriter, SensorMessage, messages
from local_platform.simulator import FleetSimulator

STATUS_EVERY_S = 0.5


def factory_messages(plan: Plan, factory: str) -> Iterator[SensorMessage]:
    """Every message `factory`'s sensors send during the live hours, in time order."""
    simulator = FleetSimulator(plan.fleet, load_catalog())
    index = plan.factory_ids.index(factory)
    rng = np.random.default_rng([plan.seed, 11, index])
    for columns in simulator.chunks(plan.first_live_chunk):
        mask = np.array([key.factory_id == factory for key in columns.series], dtype=bool)
        own = columns.take(mask[columns.series_index])
        yield from messages(own, plan.malformed_rate, rng)


class _StopError(Exception):
    pass


def run(plan: Plan, factory: str, clock: SimClock, broker: str) -> dict[str, Any]:
    status_path = plan.status_dir / f"sensors-{factory}.json"
    writer = MqttWriter(broker, f"sensors-{factory}")
    counts: Counter[str] = Counter()
    readings = messages_sent = 0
    max_behind_s = 0.0
    last_status = 0.0
    last_event_ms = plan.live_start_ms
    began = time.time()

    def status(done: bool) -> dict[str, Any]:
        return {
            "factory": factory,
            "readings": readings,
            "messages": messages_sent,
            "malformed": dict(counts),
            "last_event_ms": last_event_ms,
            "max_behind_s": round(max_behind_s, 3),
            "seconds": round(time.time() - began, 3),
            "done": done,
        }

    def stop(_signum: int, _frame: Any) -> None:
        raise _StopError

    signal.signal(signal.SIGTERM, stop)
    try:
        for message in factory_messages(plan, factory):
            target = clock.wall(message.timestamp)
            now = time.time()
            if target > now:
                writer.send_now()
                time.sleep(target - now)
            else:
                max_behind_s = max(max_behind_s, now - target)
            writer.publish(message.topic, message.payload)
            readings += message.readings
            messages_sent += 1
            last_event_ms = message.timestamp
            if message.kind:
                counts[message.kind] += 1
            if now - last_status >= STATUS_EVERY_S:
                last_status = now
                write_json(status_path, status(False))
        writer.flush(timeout_s=120)
    except _StopError:
        pass
    finally:
        writer.close()
    summary = status(True)
    write_json(status_path, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A factory's simulated sensors")
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--factory", required=True)
    parser.add_argument("--broker", required=True, help="mqtt://127.0.0.1:PORT")
    parser.add_argument("--start-ms", type=int, required=True)
    parser.add_argument("--wall0", type=float, required=True)
    parser.add_argument("--speed", type=float, required=True)
    args = parser.parse_args(argv)
    plan = Plan.read(args.plan)
    run(plan, args.factory, SimClock(args.start_ms, args.wall0, args.speed), args.broker)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
