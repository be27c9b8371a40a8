"""Run the rendered Flink SQL rules: the entry point on Managed Service for Apache Flink.

Only this module imports PyFlink, and it imports nothing from the project, so it runs as a
plain script inside the Managed Flink application package and in the `.venv-flink` test
environment alike (PyFlink pins its own pandas/pyarrow; the project's environment has no PyFlink).

Parameters come from, in increasing priority:

1. defaults below (watermark delay, window slide, parallelism),
2. the Managed Flink application properties, group ``StreamRules``
   (``/etc/flink/application_properties.json`` on the service),
3. ``--property key=value`` on the command line (local runs and tests).

Connector options are properties with a ``source.``, ``sink.`` or ``deadletter.`` prefix, e.g.
``source.connector=kinesis``, ``source.stream.arn=...``, ``source.format=iiot-batch`` (the
gateways' compact batches, decoded in the source by `kda_sql/decoder`'s format; ``json`` reads
one reading per record), ``deadletter.connector=kinesis`` for the records the decoder refuses.
``pipeline.jars`` (local runs) names jars to load, e.g. the decoder's; on the service the
application's ``jarfile`` does that. A ``flink.`` prefix passes a Flink option through, e.g.
``flink.state.backend.type=rocksdb`` (local measurements; the service sets its own); the
defaults turn on ``pipeline.object-reuse`` (``flink.pipeline.object-reuse=false`` turns it
off). Every ``${name}`` in the SQL files must have a value, or the run stops naming what is
missing.
"""

from __future__ import annotations

import argparse
import json
import re
import string
import sys
from pathlib import Path
from typing import Any

DEFAULT_SQL_DIR = Path(__file__).resolve().parent / "sql"
APPLICATION_PROPERTIES = Path("/etc/flink/application_properties.json")
PROPERTY_GROUP = "StreamRules"
DEFAULTS = {
    "watermark.delay.seconds": "5",
    "window.slide.seconds": "10",
    "parallelism": "1",
    "local.time.zone": "UTC",
    # The readings' WATERMARK is assigned after the source (the Kinesis connector does not take
    # it into the source), one watermark per source subtask, and the rules take the minimum over
    # all subtasks. A subtask that reads nothing (no shard: prod runs more subtasks than shards)
    # would hold that minimum at its start forever and no rule would ever emit; after this long
    # without a reading a subtask is left out until it reads again (kda_sql/README.md).
    "flink.table.exec.source.idle-timeout": "60 s",
    # Operators chained in one task hand each row on instead of copying it first (Flink copies by
    # default, in case user code keeps or changes a row it has passed on; the SQL operators and
    # the formats here do neither: every format emits a new row per record). The copies were
    # most of the source task's time: with the source, the three rules' filters and the window's
    # local aggregation chained, each reading was copied field by field on every branch
    # (bench/stream.py: the task threads' CPU per reading, decode + rules, drops by a third).
    # Set in the job's own configuration, so the deployed application runs with it too.
    "flink.pipeline.object-reuse": "true",
    # One event-time column, one watermark assigner and one validity filter for every rule.
    # Without it the planner plans each INSERT on its own and pushes each one's column list
    # below the watermark: the source task computed event_time, assigned watermarks and (for
    # the two rules) evaluated valid_readings' filter once per statement, three times a reading.
    # With it a view or table that several statements read (readings, valid_readings) is
    # planned once and its output shared (same rows, same watermarks: one assigner instead of
    # three copies of it). bench/stream.py measures it; `tests/stream` give the same anomalies.
    "flink.table.optimizer.reuse-optimize-block-with-digest-enabled": "true",
}
_COMMENT = re.compile(r"^\s*--.*$", re.MULTILINE)


class RunnerError(ValueError):
    """The parameters or SQL files cannot make a job; the message says what to fix."""


def read_application_properties(
    path: Path = APPLICATION_PROPERTIES, group: str = PROPERTY_GROUP
) -> dict[str, str]:
    """The property map of `group` in a Managed Flink application properties file, or {}."""
    if not path.exists():
        return {}
    groups = json.loads(path.read_text())
    for entry in groups:
        if entry.get("PropertyGroupId") == group:
            return {str(k): str(v) for k, v in entry.get("PropertyMap", {}).items()}
    return {}


def connector_options(properties: dict[str, str], prefix: str) -> str:
    """`'key' = 'value'` lines for the properties under `prefix` (e.g. "source.")."""
    options = {k[len(prefix) :]: v for k, v in properties.items() if k.startswith(prefix)}
    if "connector" not in options:
        raise RunnerError(
            f"no {prefix}connector property: set e.g. {prefix}connector=kinesis "
            f"(production) or {prefix}connector=filesystem (local files)"
        )

    def quote(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    return ",\n".join(f"  {quote(k)} = {quote(v)}" for k, v in sorted(options.items()))


def parameters(properties: dict[str, str]) -> dict[str, str]:
    """The `${name}` values for the SQL templates."""
    for key in ("watermark.delay.seconds", "window.slide.seconds"):
        value = properties[key]
        if not value.isdigit() or int(value) < 1:
            raise RunnerError(f"{key} must be a whole number of seconds >= 1, got {value!r}")
    return {
        "source_options": connector_options(properties, "source."),
        "sink_options": connector_options(properties, "sink."),
        "deadletter_options": connector_options(properties, "deadletter."),
        "watermark_delay_seconds": properties["watermark.delay.seconds"],
        "hop_slide_seconds": properties["window.slide.seconds"],
    }


def load_statements(sql_dir: Path, values: dict[str, str]) -> list[tuple[str, str]]:
    """(file name, statement) for every non-empty SQL file in `sql_dir`, in name order."""
    files = sorted(sql_dir.glob("*.sql"))
    if not files:
        raise RunnerError(f"{sql_dir}: no .sql files (run `iiot stream render` first)")
    statements = []
    for path in files:
        text = path.read_text()
        if not _COMMENT.sub("", text).strip():
            continue
        try:
            statement = string.Template(text).substitute(values)
        except KeyError as exc:
            raise RunnerError(f"{path.name}: no value for parameter ${{{exc.args[0]}}}") from exc
        statements.append((path.name, _COMMENT.sub("", statement).strip().rstrip(";")))
    return statements


def build_job(properties: dict[str, str], sql_dir: Path = DEFAULT_SQL_DIR) -> Any:
    """Create the table environment, run the DDL and return a StatementSet of the rules."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    settings = EnvironmentSettings.in_streaming_mode()
    table_env = TableEnvironment.create(settings)
    config = table_env.get_config()
    config.set("table.local-time-zone", properties["local.time.zone"])
    config.set("parallelism.default", properties["parallelism"])
    # Interval 0 emits a watermark after every reading instead of every 200 ms: deterministic
    # lateness for tests and the local demo; production keeps the periodic default.
    if "watermark.interval.ms" in properties:
        config.set("pipeline.auto-watermark-interval", properties["watermark.interval.ms"] + " ms")
    if properties.get("pipeline.jars"):
        config.set("pipeline.jars", properties["pipeline.jars"])
    for key, value in sorted(properties.items()):
        if key.startswith("flink."):
            config.set(key.removeprefix("flink."), value)
    statement_set = table_env.create_statement_set()
    inserts = 0
    for name, statement in load_statements(sql_dir, parameters(properties)):
        if statement.lstrip().upper().startswith("INSERT"):
            statement_set.add_insert_sql(statement)
            inserts += 1
        else:
            try:
                table_env.execute_sql(statement)
            except Exception as exc:
                raise RunnerError(f"{name}: {exc}") from exc
    if not inserts:
        raise RunnerError(f"{sql_dir}: no INSERT statement (no rule in the catalog?)")
    return statement_set


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sql-dir", type=Path, default=DEFAULT_SQL_DIR)
    parser.add_argument(
        "--property", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="submit and return (the service keeps it running)"
    )
    args = parser.parse_args(argv)
    properties = dict(DEFAULTS)
    properties.update(read_application_properties())
    for item in args.property:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--property {item!r}: expected KEY=VALUE")
        properties[key] = value
    try:
        result = build_job(properties, args.sql_dir).execute()
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # On the service the job runs until stopped; locally (bounded files) wait for the end.
    if not args.no_wait and not APPLICATION_PROPERTIES.exists():
        result.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
