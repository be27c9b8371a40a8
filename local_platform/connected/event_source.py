"""A Lambda function on a Kinesis event source mapping: the real handler, invoked as Lambda does.

`python -m local_platform.connected.event_source --plan PLAN --function influx_writer
--stream iiot-local-telemetry` imports `lambdas.<function>.handler` (unchanged; its settings
come from the environment, as on Lambda) and feeds it what the mapping would
(`stacks/timeseries_stack.py`, `stacks/alerting_stack.py`): up to `--batch-size` records of a
shard in the Kinesis event shape (base64 data, sequence numbers, arrival times), with
`ReportBatchItemFailures`:

* a response listing failed items checkpoints before the first failed record and retries the
  batch from it; an exception (a function error) retries the whole batch, halved each time
  (`BisectBatchOnFunctionError`);
* after `--retry-attempts` retries the records go to the on-failure destination (an SQS
  message with the shard and sequence range, as Lambda sends) and the shard moves on.

Each invocation gets a context object like Lambda's. The handler's own logs (Powertools, JSON on
stdout) go to the process log, where the reconciliation reads the decisions.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_platform.connected.kinesis import ACCOUNT, REGION, ShardReader, client
from local_platform.connected.plan import Plan
from local_platform.connected.service import Service

log = logging.getLogger(__name__)

HANDLERS = {
    "influx_writer": "lambdas.influx_writer.handler",
    "alert_router": "lambdas.alert_router.handler",
}


@dataclass
class LambdaContext:
    function_name: str
    aws_request_id: str
    memory_limit_in_mb: int = 512
    timeout_s: float = 60.0
    started: float = 0.0

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return "local"

    @property
    def function_version(self) -> str:
        return "$LATEST"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.time() - self.started)) * 1000))


def kinesis_event(stream: str, shard: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    arn = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{stream}"
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": record["PartitionKey"],
                    "sequenceNumber": record["SequenceNumber"],
                    "data": base64.b64encode(record["Data"]).decode(),
                    "approximateArrivalTimestamp": record[
                        "ApproximateArrivalTimestamp"
                    ].timestamp(),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard}:{record['SequenceNumber']}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": f"arn:aws:iam::{ACCOUNT}:role/local-lambda",
                "awsRegion": REGION,
                "eventSourceARN": arn,
            }
            for record in records
        ]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A Lambda function on a Kinesis stream")
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--function", choices=sorted(HANDLERS), required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--retry-attempts", type=int, default=3)
    parser.add_argument("--on-failure", required=True, help="SQS queue URL")
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument(
        "--ledger", type=Path, help="append each record's arrival time and data here (JSON lines)"
    )
    args = parser.parse_args(argv)
    from iiot import logs

    logs.configure("INFO")
    plan = Plan.read(args.plan)
    handler: Any
    if args.function == "influx_writer":
        from lambdas.influx_writer.handler import handler
    else:
        from lambdas.alert_router.handler import handler
    function_name = f"iiot-local-{args.function.replace('_', '-')}"
    service = Service(plan.status_dir / f"lambda-{args.function}.json")
    reader = ShardReader(args.stream, client("kinesis"))
    reader.refresh()
    sqs = client("sqs")
    counters: dict[str, Any] = {
        "invocations": 0,
        "records": 0,
        "function_errors": 0,
        "item_failures": 0,
        "retries": 0,
        "on_failure_records": 0,
        "behind_ms": 0,
        "last_activity": 0.0,
        "pending": False,
    }
    service.counters = counters
    ledger = args.ledger.open("a") if args.ledger else None
    attempts: dict[str, int] = {}  # shard -> retries of its current batch
    limits: dict[str, int] = {}  # shard -> batch size after bisecting

    def invoke(shard: str, records: list[dict[str, Any]]) -> tuple[str | None, bool]:
        """(the first failed sequence number, or None; whether the function failed)."""
        context = LambdaContext(function_name, str(uuid.uuid4()), timeout_s=args.timeout_s)
        context.started = time.time()
        counters["invocations"] += 1
        try:
            response = handler(kinesis_event(args.stream, shard, records), context)
        except Exception:  # a function error: the whole batch failed
            counters["function_errors"] += 1
            # Lambda writes the error and its stack trace to the function's log
            log.exception("function error", extra={"shard": shard, "records": len(records)})
            return records[0]["SequenceNumber"], True
        failures = (response or {}).get("batchItemFailures") or []
        if not failures:
            return None, False
        counters["item_failures"] += len(failures)
        failed = {f["itemIdentifier"] for f in failures}
        for record in records:
            if record["SequenceNumber"] in failed:
                return str(record["SequenceNumber"]), False
        return str(min(failed, key=int)), False

    def give_up(shard: str, records: list[dict[str, Any]]) -> None:
        counters["on_failure_records"] += len(records)
        sqs.send_message(
            QueueUrl=args.on_failure,
            MessageBody=json.dumps(
                {
                    "requestContext": {
                        "condition": "RetryAttemptsExhausted",
                        "functionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:"
                        f"{function_name}",
                    },
                    "KinesisBatchInfo": {
                        "shardId": shard,
                        "startSequenceNumber": records[0]["SequenceNumber"],
                        "endSequenceNumber": records[-1]["SequenceNumber"],
                        "batchSize": len(records),
                        "streamArn": f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{args.stream}",
                    },
                }
            ),
        )

    def step() -> float:
        busy = False
        for shard in reader.shards.values():
            limit = limits.get(shard.shard_id, args.batch_size)
            records = reader.read(shard, limit)
            if not records:
                continue
            busy = True
            counters["last_activity"] = time.time()
            counters["pending"] = True
            if ledger is not None:
                for record in records:
                    ledger.write(
                        json.dumps(
                            {
                                "sequence": record["SequenceNumber"],
                                "arrival": record["ApproximateArrivalTimestamp"].timestamp(),
                                "invoked": time.time(),
                                "data": bytes(record["Data"]).decode(errors="replace"),
                            }
                        )
                        + "\n"
                    )
                ledger.flush()
            failed_at, function_error = invoke(shard.shard_id, records)
            if failed_at is None:
                counters["records"] += len(records)
                reader.checkpoint(shard, records[-1]["SequenceNumber"])
                attempts.pop(shard.shard_id, None)
                limits.pop(shard.shard_id, None)
                continue
            done = [r for r in records if int(r["SequenceNumber"]) < int(failed_at)]
            if done and not function_error:
                counters["records"] += len(done)
                reader.checkpoint(shard, done[-1]["SequenceNumber"])
            retries = attempts.get(shard.shard_id, 0) + 1
            failed_records = [r for r in records if int(r["SequenceNumber"]) >= int(failed_at)]
            if retries > args.retry_attempts:
                give_up(shard.shard_id, failed_records)
                reader.checkpoint(shard, records[-1]["SequenceNumber"])
                reader.rewind(shard)
                attempts.pop(shard.shard_id, None)
                limits.pop(shard.shard_id, None)
                continue
            counters["retries"] += 1
            attempts[shard.shard_id] = retries
            if function_error:
                limits[shard.shard_id] = max(1, len(records) // 2)
            reader.rewind(shard, failed_at)
            service.stopping.wait(min(1.0 * retries, 5.0))  # the mapping's retry delay
        counters["behind_ms"] = reader.behind_ms
        if not busy:
            counters["pending"] = False
        return 0.0 if busy else 0.25

    service.run(step, on_stop=ledger.close if ledger is not None else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
