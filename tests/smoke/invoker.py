"""A tiny local stand-in for Lambda's Invoke API that runs one real handler in this process
(moto's Lambda would need Docker to run it): `POST /2015-03-31/functions/<name>/invocations`
calls `handler(event, None)` with the function's environment set, and answers as Lambda does
(the result as JSON, or `X-Amz-Function-Error: Unhandled` with the error's message and type).
Bound to 127.0.0.1; `close()` stops it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from local_platform.connected.local_http import LocalHttpServer
from local_platform.connected.runner import _environment

Handler = Callable[[dict[str, Any], Any], Any]


class LocalInvoker:
    def __init__(self, name: str, handler: Handler, environment: dict[str, str]) -> None:
        self.name = name
        self.invocations: list[dict[str, Any]] = []
        lock = threading.Lock()  # one invocation at a time: the environment is process-wide
        invoker = self

        class Requests(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:2] != ["2015-03-31", "functions"] or parts[2:] != [
                    invoker.name,
                    "invocations",
                ]:
                    self._answer(
                        404,
                        {"Type": "User", "message": f"Function not found: {self.path}"},
                        {"x-amzn-ErrorType": "ResourceNotFoundException"},
                    )
                    return
                event = json.loads(body or b"{}")
                invoker.invocations.append(event)
                with lock, _environment(environment):
                    try:
                        result, headers = handler(event, None), {}
                    except Exception as error:  # what Lambda returns for an unhandled error
                        result = {"errorMessage": str(error), "errorType": type(error).__name__}
                        headers = {"X-Amz-Function-Error": "Unhandled"}
                self._answer(200, result, {"X-Amz-Executed-Version": "$LATEST", **headers})

            def _answer(self, status: int, document: Any, headers: dict[str, str]) -> None:
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                pass

        self._http = LocalHttpServer(Requests)
        self.url = self._http.url

    def close(self) -> None:
        self._http.close()
