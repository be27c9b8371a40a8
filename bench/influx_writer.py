"""Points per second through the InfluxDB writer's encode path (no server, no network).

Readings come from the simulator (2 factories x 10 machines x 24 h by default), in Kinesis
record-sized pieces of 1,000 readings, in both wire formats. Stages measured on one core, best
of three runs:

* encode only: `line_protocol.encode_columns` on decoded columns;
* whole record: `InfluxWriterService.write_record` (decode, contract validation, encode,
  batching) with a writer that only counts lines: what one Lambda invocation spends before
  the network.

    python bench/influx_writer.py [--hours 24]

The last line is JSON with every figure.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from iiot.catalog import load_catalog
from iiot.contract import ReadingColumns, Validator
from iiot.wire import encode_batch, encode_json
from lambdas.influx_writer.line_protocol import encode_columns
from lambdas.influx_writer.repository import RecordingDeadLetter
from lambdas.influx_writer.service import InfluxWriterService
from local_platform.simulator import FleetConfig, FleetSimulator

RECORD_READINGS = 1000


class CountingWriter:
    def __init__(self) -> None:
        self.lines = 0

    def write(self, lines: list[str]) -> None:
        self.lines += len(lines)


def best_of(runs: int, work: Callable[[], int]) -> tuple[float, int]:
    best = float("inf")
    count = 0
    for _ in range(runs):
        began = time.perf_counter()
        count = work()
        best = min(best, time.perf_counter() - began)
    return best, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=24.0)
    args = parser.parse_args()
    catalog = load_catalog()
    config = FleetConfig(factories=2, machines_per_factory=10, hours=args.hours, seed=1)
    columns = ReadingColumns.concat(list(FleetSimulator(config, catalog).chunks()))
    # only valid readings: the figures are for the write path, rejects are measured elsewhere
    columns = Validator(catalog, check_range=True).validate_columns(columns).columns
    pieces = [
        columns.take(slice(i, i + RECORD_READINGS)) for i in range(0, len(columns), RECORD_READINGS)
    ]
    batches = [encode_batch(piece) for piece in pieces]
    jsons = [encode_json(piece.to_readings()) for piece in pieces]

    encode_s, points = best_of(3, lambda: sum(len(encode_columns(p)) for p in pieces))

    def through_service(payloads: list[bytes]) -> int:
        writer = CountingWriter()
        service = InfluxWriterService(
            writer=writer, dead_letter=RecordingDeadLetter(), validator=Validator(catalog)
        )
        for payload in payloads:
            service.write_record(payload, {})
        return writer.lines

    batch_s, batch_points = best_of(3, lambda: through_service(batches))
    json_s, json_points = best_of(3, lambda: through_service(jsons))
    figures = {
        "points": points,
        "encode only, points/s": round(points / encode_s),
        "compact batch records, points/s": round(batch_points / batch_s),
        "JSON records, points/s": round(json_points / json_s),
        "line protocol bytes/point": round(
            sum(len(line) + 1 for line in encode_columns(pieces[0])) / len(pieces[0]), 1
        ),
    }
    for name, value in figures.items():
        print(f"{name:34} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
