"""The InfluxDB bucket retention handler against a stand-in for the InfluxDB v2 API, and the
retention each environment's stack asks for."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from config.environments import environments
from local_platform.connected.local_http import LocalHttpServer
from stacks.constructs import influx_retention_handler as handler
from tests.infra.conftest import Synth


class InfluxApi:
    """The four endpoints the handler uses; a session cookie only after a good sign-in."""

    def __init__(self, buckets: list[dict[str, Any]]) -> None:
        self.buckets = buckets
        self.requests: list[tuple[str, str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: Any = None, cookie: str = "") -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                if cookie:
                    self.send_header("Set-Cookie", f"{cookie}; Path=/api/v2; HttpOnly")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length)) if length else None
                api.requests.append((self.command, self.path, body))
                if self.path == "/api/v2/signin":
                    expected = base64.b64encode(b"iiot-admin:secret").decode()
                    if self.headers.get("Authorization") != f"Basic {expected}":
                        return self._answer(401, {"message": "unauthorized"})
                    return self._answer(204, cookie="influxdb-oss-session=abc")
                if self.headers.get("Cookie") != "influxdb-oss-session=abc":
                    return self._answer(401, {"message": "no session"})
                if self.path == "/api/v2/signout":
                    return self._answer(204)
                if self.command == "GET" and self.path.startswith("/api/v2/buckets?"):
                    return self._answer(200, {"buckets": api.buckets})
                if self.command == "PATCH" and self.path.startswith("/api/v2/buckets/"):
                    return self._answer(200, {"id": self.path.rsplit("/", 1)[-1], **body})
                return self._answer(404, {"message": "not found"})

            do_GET = do_POST = do_PATCH = _handle  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.http = LocalHttpServer(Handler)
        self.url = self.http.url

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def api() -> Iterator[InfluxApi]:
    server = InfluxApi([{"id": "0a1b2c", "name": "telemetry", "retentionRules": []}])
    yield server
    server.close()


CREDENTIALS = {"username": "iiot-admin", "password": "secret"}


def test_sets_the_buckets_retention_and_signs_out(api: InfluxApi) -> None:
    bucket_id = handler.set_retention(
        api.url, CREDENTIALS, bucket="telemetry", org="iiot", seconds=7 * 86_400
    )
    assert bucket_id == "0a1b2c"
    methods = [(method, path.split("?")[0]) for method, path, _ in api.requests]
    assert methods == [
        ("POST", "/api/v2/signin"),
        ("GET", "/api/v2/buckets"),
        ("PATCH", "/api/v2/buckets/0a1b2c"),
        ("POST", "/api/v2/signout"),
    ]
    assert "name=telemetry" in api.requests[1][1]
    assert "org=iiot" in api.requests[1][1]
    assert api.requests[2][2] == {"retentionRules": [{"type": "expire", "everySeconds": 604800}]}


def test_a_missing_bucket_fails_the_deployment_and_still_signs_out(api: InfluxApi) -> None:
    api.buckets = []
    with pytest.raises(RuntimeError, match="0 buckets named 'telemetry'"):
        handler.set_retention(api.url, CREDENTIALS, bucket="telemetry", org="iiot", seconds=60)
    assert api.requests[-1][:2] == ("POST", "/api/v2/signout")


def test_wrong_credentials_fail_the_deployment(api: InfluxApi) -> None:
    from urllib.error import HTTPError

    with pytest.raises(HTTPError, match="401"):
        handler.set_retention(
            api.url, {"username": "iiot-admin", "password": "wrong"}, bucket="telemetry",
            org="iiot", seconds=60,
        )  # fmt: skip


def test_delete_leaves_the_bucket_alone(api: InfluxApi) -> None:
    event = {
        "RequestType": "Delete",
        "PhysicalResourceId": "x",
        "ResourceProperties": {"Url": api.url, "Org": "iiot", "Bucket": "telemetry"},
    }
    assert handler.on_event(event) == {"PhysicalResourceId": "x"}
    assert api.requests == []


def test_the_inline_handler_fits_cloudformations_limit() -> None:
    from stacks.timeseries_stack import RETENTION_HANDLER

    assert len(RETENTION_HANDLER.read_text()) <= 4096  # ZipFile code


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_each_environment_sets_its_configured_retention(synth: Synth, env: str) -> None:
    resources = synth.template(env, "timeseries")["Resources"]
    (retention,) = [b for b in resources.values() if b["Type"] == "Custom::InfluxBucketRetention"]
    days = environments()[env].influx_retention_days
    assert retention["Properties"]["RetentionSeconds"] == str(days * 86_400)
    assert retention["Properties"]["Bucket"] == "telemetry"
