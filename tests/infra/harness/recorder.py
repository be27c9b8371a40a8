"""Every AWS call a runtime makes in this process, as botocore is asked to make it.

`recording()` wraps `botocore.client.BaseClient._make_api_call`, which every boto3 client of
every session goes through (moto answers behind it), and records the service, the operation,
the parameters and the client's region of each call. For the services moto does not implement
(Greengrass v2), `stubs` answers instead, after the call is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from botocore.client import BaseClient

Stub = Callable[[str, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Call:
    """One API call: botocore's service name (`greengrassv2`), the operation, its parameters."""

    service: str
    operation: str
    params: dict[str, Any]
    region: str

    def __str__(self) -> str:
        return f"{self.service}.{self.operation}"


@contextmanager
def recording(stubs: Mapping[str, Stub] | None = None) -> Iterator[list[Call]]:
    """The calls made while the block runs, in order."""
    calls: list[Call] = []
    original = BaseClient._make_api_call

    def make_api_call(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        service = client.meta.service_model.service_name
        calls.append(Call(service, operation, dict(params), client.meta.region_name))
        if stubs and service in stubs:
            return stubs[service](operation, params)
        return original(client, operation, params)

    BaseClient._make_api_call = make_api_call  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        BaseClient._make_api_call = original  # type: ignore[method-assign]
