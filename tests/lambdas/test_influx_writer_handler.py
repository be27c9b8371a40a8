"""The InfluxDB writer Lambda end to end: moto for Secrets Manager, SQS and DynamoDB, and a
local HTTP endpoint speaking the v2 `/api/v2/write` API that `influxdb-client` calls (the
v1 server cannot: Debian's InfluxDB 1.6 has no v2 API)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

import boto3
import pytest

from lambdas.influx_writer import handler
from local_platform.connected.local_http import LocalHttpServer

from .conftest import create_queue, create_table, drain, kinesis_event, unique
from .writer_data import batch_payload, json_payload, readings


class V2Endpoint:
    """Records each write request; answers with the next scripted status (default 204)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                url = urlparse(self.path)
                endpoint.requests.append(
                    {
                        "path": url.path,
                        "query": {k: v[0] for k, v in parse_qs(url.query).items()},
                        "authorization": self.headers.get("Authorization"),
                        "lines": body.decode().splitlines(),
                    }
                )
                status = endpoint.statuses.pop(0) if endpoint.statuses else 204
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.http = LocalHttpServer(Handler)
        self.url = self.http.url

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def endpoint() -> Iterator[V2Endpoint]:
    server = V2Endpoint()
    yield server
    server.close()


@pytest.fixture
def writer_env(aws, monkeypatch, endpoint):
    secret = boto3.client("secretsmanager").create_secret(
        Name=unique("influx"), SecretString=json.dumps({"token": "s3cret-token"})
    )["ARN"]
    idempotency = unique("idempotency")
    create_table(idempotency, "id")
    dead_letters = create_queue(unique("writer-dlq"))
    monkeypatch.setenv("INFLUXDB_URL", endpoint.url)
    monkeypatch.setenv("INFLUXDB_ORG", "iiot")
    monkeypatch.setenv("INFLUXDB_BUCKET", "telemetry")
    monkeypatch.setenv("INFLUXDB_SECRET_ARN", secret)
    monkeypatch.setenv("IDEMPOTENCY_TABLE", idempotency)
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", dead_letters)
    monkeypatch.setenv("WRITE_BATCH_POINTS", "15")
    return {"dead_letters": dead_letters}


def test_batch_of_both_formats_and_a_poison_record(writer_env, endpoint, lambda_context):
    event = kinesis_event(
        [
            batch_payload(readings("F01-M001", count=10)),
            b"this is not telemetry",
            json_payload(readings("F01-M002", count=2)),
        ]
    )
    assert handler.handler(event, lambda_context) == {"batchItemFailures": []}
    assert [len(r["lines"]) for r in endpoint.requests] == [15, 5, 4]
    first = endpoint.requests[0]
    assert first["path"] == "/api/v2/write"
    assert first["query"] == {"org": "iiot", "bucket": "telemetry", "precision": "ms"}
    assert first["authorization"] == "Token s3cret-token"
    (dead,) = drain(writer_env["dead_letters"])
    assert dead["reason"].startswith("poison record: ")
    assert dead["origin"] == {"sequence_number": "2", "source": "kinesis"}
    assert base64.b64decode(dead["payload_base64"]) == b"this is not telemetry"

    # Redelivered (a Lambda retry): the idempotency keys stop a second write.
    assert handler.handler(event, lambda_context) == {"batchItemFailures": []}
    assert len(endpoint.requests) == 3


def test_throttling_is_retried_and_an_outage_fails_only_that_record(
    writer_env, endpoint, lambda_context, monkeypatch
):
    monkeypatch.setenv("WRITE_MAX_ATTEMPTS", "2")
    # record 1: 429 then OK; record 2: 503 twice -> reported failed
    endpoint.statuses = [429, 204, 503, 503]
    event = kinesis_event(
        [batch_payload(readings("F01-M001", count=2)), json_payload(readings("F01-M002", count=2))],
        first_sequence=100,
    )
    assert handler.handler(event, lambda_context) == {
        "batchItemFailures": [{"itemIdentifier": "101"}]
    }
    assert len(endpoint.requests) == 4
    assert drain(writer_env["dead_letters"]) == []
    # the failed record is not remembered as done: its retry writes it
    retry = kinesis_event([json_payload(readings("F01-M002", count=2))], first_sequence=101)
    assert handler.handler(retry, lambda_context) == {"batchItemFailures": []}
    assert len(endpoint.requests) == 5


def test_missing_configuration_fails_fast(writer_env, lambda_context, monkeypatch):
    monkeypatch.delenv("INFLUXDB_BUCKET")
    with pytest.raises(KeyError, match="INFLUXDB_BUCKET"):
        handler.handler(kinesis_event([b"x"]), lambda_context)


def test_the_writer_forwards_nothing_even_where_an_old_stack_names_a_readings_stream(
    writer_env, endpoint, lambda_context, monkeypatch
):
    """The Flink rules read the telemetry stream themselves (their own enhanced fan-out
    consumer): the writer no longer puts one JSON row per reading anywhere, even with the
    variable an older stack set."""
    kinesis = boto3.client("kinesis")
    stream = unique("readings")
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    monkeypatch.setenv("READINGS_STREAM_NAME", stream)
    event = kinesis_event([batch_payload(readings("F01-M001", count=3))])
    assert handler.handler(event, lambda_context) == {"batchItemFailures": []}
    assert len(endpoint.requests) == 1  # written to InfluxDB

    shard = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    assert kinesis.get_records(ShardIterator=iterator)["Records"] == []
