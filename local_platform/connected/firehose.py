"""The delivery stream: telemetry stream -> landing-zone files (`stacks/ingestion_stack.py`).

`python -m local_platform.connected.firehose --plan PLAN` reads the telemetry stream from its
oldest record and writes what it buffered every `firehose_buffer_s` (wall; the stack's 300 s /
128 MiB, scaled to accelerated time) as one object: the records' bytes concatenated without a
delimiter (compact batches carry their length), uncompressed, under
`landing/date=YYYY-MM-DD/hour=HH/` of the arrival time, named like Firehose's objects
(`<delivery stream>-1-YYYY-MM-DD-HH-MM-SS-<uuid>`). An object appears whole (written under a
hidden name, then renamed). The stream position moves only after the object is written, so a
crash between the two delivers the records again (Firehose is at least once; the lake
de-duplicates).
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from local_platform.connected.kinesis import ShardReader, client
from local_platform.connected.plan import DELIVERY_STREAM, TELEMETRY_STREAM, Plan
from local_platform.connected.service import Service

MAX_OBJECT_BYTES = 8 * 1024 * 1024


def land(landing_dir: Path, content: bytes, now: float) -> Path:
    arrival = datetime.fromtimestamp(now, tz=UTC)
    folder = landing_dir / f"date={arrival:%Y-%m-%d}" / f"hour={arrival:%H}"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{DELIVERY_STREAM}-1-{arrival:%Y-%m-%d-%H-%M-%S}-{uuid.uuid4()}"
    partial = folder / f".{name}.partial"
    partial.write_bytes(content)
    target = folder / name
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    from iiot import logs

    parser = argparse.ArgumentParser(description="Firehose: telemetry stream -> landing zone")
    parser.add_argument("--plan", type=Path, required=True)
    args = parser.parse_args(argv)
    logs.configure("INFO")
    plan = Plan.read(args.plan)
    service = Service(plan.status_dir / "firehose.json")
    reader = ShardReader(TELEMETRY_STREAM, client("kinesis"))
    reader.refresh()
    counters = {"records": 0, "bytes": 0, "objects": 0, "buffered_records": 0, "behind_ms": 0}
    service.counters = counters
    buffer: list[bytes] = []
    last_read: dict[str, str] = {}  # shard -> last sequence number in the buffer
    opened: float | None = None

    def flush() -> None:
        nonlocal opened
        if buffer:
            content = b"".join(buffer)
            land(plan.landing_dir, content, time.time())
            counters["objects"] += 1
            counters["bytes"] += len(content)
            counters["records"] += len(buffer)
        for shard_id, sequence in last_read.items():
            reader.checkpoint(reader.shards[shard_id], sequence)
        buffer.clear()
        last_read.clear()
        counters["buffered_records"] = 0
        opened = None

    def step() -> float:
        nonlocal opened
        got = 0
        for shard in reader.shards.values():
            records = reader.read(shard, 500)
            if records:
                got += len(records)
                if opened is None:
                    opened = time.time()
                buffer.extend(bytes(r["Data"]) for r in records)
                last_read[shard.shard_id] = records[-1]["SequenceNumber"]
        counters["buffered_records"] = len(buffer)
        counters["behind_ms"] = reader.behind_ms
        size = sum(len(b) for b in buffer)
        if opened is not None and (
            time.time() - opened >= plan.firehose_buffer_s or size >= MAX_OBJECT_BYTES
        ):
            flush()
            return 0.0
        return 0.0 if got else 0.2

    service.run(step, on_stop=flush)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
