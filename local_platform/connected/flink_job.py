"""The stream rules' Flink job in a connected run (run by `.venv-flink`'s interpreter).

The job is `kda_sql.runner.build_job`: the rendered Flink SQL of `kda_sql/sql/`, unchanged. Its
source is the folder the rules' feed writes (compact batches, one base64 batch per line, read
continuously and decoded in the source by the `iiot-batch` format, as the deployed application
decodes the telemetry stream's records), its sinks a folder of anomaly files and one of dead
letters beside it (`deadletters/`); checkpoints every second commit the sinks' files (the
Kinesis connector of the deployed application is a Maven jar the local PyFlink does not have).
The decoder's jar is built (or reused: `kda_sql.flink_env.decoder_jar`) when the job starts.
The second job (the lake's batch evaluation of late data, `late.py`) reads JSON rows. The
watermark delay is the plan's, in event time (accelerated time stretches a second of pipeline
delay into `speed` simulated seconds). Only PyFlink, the runner and two project modules that
need only the standard library (`kda_sql.flink_env`, `kda_sql.decoder.build`) are imported:
this file runs outside `.venv`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _properties(source: Path, sink: Path, delay_s: int, jar: Path | None) -> dict[str, str]:
    """The runner's properties: batches decoded by the format's `jar`, or JSON rows without."""
    from kda_sql.flink_env import source_properties
    from kda_sql.runner import DEFAULTS

    properties = dict(DEFAULTS)
    properties.update(source_properties(source, batches=jar is not None, jar=jar))
    properties.update(
        {
            # The feed writes a file once the job has opened the one before (stream.FileFeed:
            # the source reads the files of one scan in no order), so each file waits for a
            # scan: every 200 ms.
            "source.source.monitor-interval": "200 ms",
            "sink.connector": "filesystem",
            "sink.path": str(sink),
            "sink.format": "json",
            "sink.sink.rolling-policy.rollover-interval": "1 s",
            "sink.sink.rolling-policy.check-interval": "1 s",
            "deadletter.connector": "filesystem",
            "deadletter.path": str(sink.parent / "deadletters"),
            "deadletter.format": "json",
            "deadletter.sink.rolling-policy.rollover-interval": "1 s",
            "deadletter.sink.rolling-policy.check-interval": "1 s",
            "watermark.delay.seconds": str(delay_s),
        }
    )
    return properties


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The stream rules on a folder of batches")
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--sink", type=Path, required=True)
    parser.add_argument("--watermark-delay-s", type=int, required=True)
    parser.add_argument(
        "--late-source", type=Path, help="a second job, for the batch evaluation of late data"
    )
    parser.add_argument("--late-sink", type=Path)
    parser.add_argument(
        "--sql-dir", type=Path, help="rendered rules (e.g. calibrated); default: kda_sql/sql"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from kda_sql.flink_env import decoder_jar
    from kda_sql.runner import DEFAULT_SQL_DIR, build_job

    jobs: list[tuple[Path, Path, Path | None]] = [(args.source, args.sink, decoder_jar())]
    if args.late_source is not None and args.late_sink is not None:
        # The same rules as a second job in this JVM (started now, so that evaluating the
        # backlog at the end of the run does not wait for a JVM): its watermark moves only
        # with the rows written to its own folder.
        jobs.append((args.late_source, args.late_sink, None))
    results = []
    for source, sink, jar in jobs:
        statements = build_job(
            _properties(source, sink, args.watermark_delay_s, jar),
            args.sql_dir or DEFAULT_SQL_DIR,
        )
        statements._t_env.get_config().set("execution.checkpointing.interval", "1 s")
        results.append(statements.execute())
    for result in results:
        result.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
