"""The stream rules' Flink job in a connected run (run by `.venv-flink`'s interpreter).

The job is `kda_sql.runner.build_job`: the rendered Flink SQL of `kda_sql/sql/`, unchanged. Its
source is the folder the rules' feed writes (JSON rows, read continuously), its sink a folder of
anomaly files; checkpoints every second commit the sink's files (the Kinesis connector of the
deployed application is a Maven jar the local PyFlink does not have). The watermark delay is the
plan's, in event time (accelerated time stretches a second of pipeline delay into `speed`
simulated seconds). Only PyFlink and the runner are imported: this file runs outside `.venv`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _properties(source: Path, sink: Path, delay_s: int) -> dict[str, str]:
    from kda_sql.runner import DEFAULTS

    properties = dict(DEFAULTS)
    properties.update(
        {
            "source.connector": "filesystem",
            "source.path": str(source),
            "source.format": "json",
            "source.json.ignore-parse-errors": "true",
            "source.source.monitor-interval": "1 s",
            "sink.connector": "filesystem",
            "sink.path": str(sink),
            "sink.format": "json",
            "sink.sink.rolling-policy.rollover-interval": "1 s",
            "sink.sink.rolling-policy.check-interval": "1 s",
            "watermark.delay.seconds": str(delay_s),
        }
    )
    return properties


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The stream rules on a folder of readings")
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--sink", type=Path, required=True)
    parser.add_argument("--watermark-delay-s", type=int, required=True)
    parser.add_argument(
        "--late-source", type=Path, help="a second job, for the batch evaluation of late data"
    )
    parser.add_argument("--late-sink", type=Path)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from kda_sql.runner import build_job

    jobs = [(args.source, args.sink)]
    if args.late_source is not None and args.late_sink is not None:
        # The same rules as a second job in this JVM (started now, so that evaluating the
        # backlog at the end of the run does not wait for a JVM): its watermark moves only
        # with the rows written to its own folder.
        jobs.append((args.late_source, args.late_sink))
    results = []
    for source, sink in jobs:
        statements = build_job(_properties(source, sink, args.watermark_delay_s))
        statements._t_env.get_config().set("execution.checkpointing.interval", "1 s")
        results.append(statements.execute())
    for result in results:
        result.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
