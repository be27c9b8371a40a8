"""Once per key: the functions' idempotency, behind one small interface.

A service decides *what* is done once and under which key (only for items that passed their
integrity checks); this module decides *how*. `content` is a digest of what the key stands
for: a second, different content under a key already done is a `ContentMismatchError`, never a
silent duplicate. Production: Powertools idempotency on DynamoDB (`payload_validation_jmespath`
raises `IdempotencyValidationError`, turned into `ContentMismatchError` here). Tests, demo and
benchmarks: `InMemoryOnce` (the same decisions in a dict) or `EveryTime` (no memory at all).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

Result = dict[str, Any]
DUPLICATE = "duplicate"  # set to True in a result that was stored by an earlier run


class ContentMismatchError(Exception):
    """The key was done before with other content; the caller refuses this content."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key} was already processed with other content")
        self.key = key


class Once(Protocol):
    def run(self, key: str, action: Callable[[], Result], *, content: str = "") -> Result:
        """`action()` the first time `key` is seen; afterwards its stored result with
        `duplicate: True`. ContentMismatchError when `content` differs from the stored one.
        A failing action stores nothing, so a retry runs it again."""
        ...


class EveryTime:
    """No idempotency: every call runs (benchmarks, the local demo)."""

    def run(self, key: str, action: Callable[[], Result], *, content: str = "") -> Result:
        return action()


@dataclass
class InMemoryOnce:
    """`Once` in a dict, with the Powertools semantics (tests)."""

    done: dict[str, tuple[str, Result]] = field(default_factory=dict)

    def run(self, key: str, action: Callable[[], Result], *, content: str = "") -> Result:
        if key in self.done:
            stored_content, result = self.done[key]
            if stored_content != content:
                raise ContentMismatchError(key)
            return {**result, DUPLICATE: True}
        result = action()
        self.done[key] = (content, result)
        return result


def _mark_duplicate(response: Any, idempotent_data: Any) -> Any:
    """Powertools response hook: a stored result says it is one."""
    return {**response, DUPLICATE: True} if isinstance(response, dict) else response


class PowertoolsOnce:
    """Powertools idempotency (`idempotent_function` on a persistence layer, DynamoDB in the
    functions). Records expire after `expires_after_seconds`; `key_prefix` keeps the stored keys
    stable whatever the calling code is named."""

    def __init__(
        self, persistence: Any, *, key_prefix: str, expires_after_seconds: int = 86_400
    ) -> None:
        from aws_lambda_powertools.utilities.idempotency import (
            IdempotencyConfig,
            idempotent_function,
        )

        self._config = IdempotencyConfig(
            event_key_jmespath="key",
            payload_validation_jmespath="content",
            expires_after_seconds=expires_after_seconds,
            response_hook=_mark_duplicate,
        )

        def run_action(request: dict[str, str], action: Callable[[], Result]) -> Result:
            return action()

        self._guarded = idempotent_function(
            run_action,
            data_keyword_argument="request",
            persistence_store=persistence,
            config=self._config,
            key_prefix=key_prefix,
        )

    def register_lambda_context(self, context: Any) -> None:
        """Lets an in-progress record expire with the invocation (Powertools needs the time
        left)."""
        self._config.register_lambda_context(context)

    def run(self, key: str, action: Callable[[], Result], *, content: str = "") -> Result:
        from aws_lambda_powertools.utilities.idempotency.exceptions import (
            IdempotencyValidationError,
        )

        try:
            result: Result = self._guarded(request={"key": key, "content": content}, action=action)
        except IdempotencyValidationError as exc:
            raise ContentMismatchError(key) from exc
        return result
