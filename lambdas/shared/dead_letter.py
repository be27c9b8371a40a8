"""The dead-letter queue of a function: payloads it cannot use, with the reason."""

from __future__ import annotations

import base64
import json
from typing import Any


class SqsDeadLetter:
    """Keeps a payload the function cannot use, with the reason, for an operator to inspect."""

    PAYLOAD_CAP = 128 * 1024  # SQS messages are at most 256 KiB; base64 adds a third

    def __init__(self, client: Any, queue_url: str) -> None:
        self._client = client
        self._queue_url = queue_url

    def send(self, *, reason: str, payload: bytes, origin: dict[str, str]) -> None:
        self._client.send_message(
            QueueUrl=self._queue_url,
            MessageBody=json.dumps(
                {
                    "reason": reason,
                    "origin": origin,
                    "payload_base64": base64.b64encode(payload[: self.PAYLOAD_CAP]).decode(),
                    "payload_bytes": len(payload),
                }
            ),
        )


class RecordingDeadLetter:
    """Dead letters in a list (tests, benchmarks, the local demo)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, *, reason: str, payload: bytes, origin: dict[str, str]) -> None:
        self.sent.append({"reason": reason, "payload": payload, "origin": origin})
