"""The InfluxDB count the smoke tests check (`iiot smoke`'s influx step), run by the command
itself (`--influx-via direct`) or by the probe Lambda inside the environment's VPC
(handler.py), where the private Timestream for InfluxDB instance is reachable."""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

# Machine ids and metric names the query may name: no quotes, no InfluxQL syntax.
NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class InfluxQueryError(Exception):
    """The InfluxDB URL, the names or the query were refused."""


def influx_credentials(secrets: Any, secret_arn: str) -> dict[str, str]:
    """The writer's secret: `token`, or `username` and `password`."""
    document: dict[str, str] = json.loads(
        secrets.get_secret_value(SecretId=secret_arn)["SecretString"]
    )
    return document


def influx_count(
    url: str,
    database: str,
    credentials: Mapping[str, str],
    machine_id: str,
    metric: str,
    timeout_s: float,
) -> int:
    """How many readings of `metric` from `machine_id` InfluxDB holds (InfluxQL over the
    v1-compatible /query; a 2.x bucket answers under its name). Signs in with the secret's
    token, or its username and password (a session, as Timestream for InfluxDB's admin user)."""
    # urlopen below only ever gets this http(s) URL.
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise InfluxQueryError(f"InfluxDB URL {url!r} is not http(s)")
    for what, name in (("machine id", machine_id), ("metric", metric), ("bucket", database)):
        if not NAME.match(name):
            raise InfluxQueryError(f"{what} {name!r} is not a plain name")
    headers: dict[str, str] = {}
    if credentials.get("token"):
        headers["Authorization"] = f"Token {credentials['token']}"
    elif credentials.get("username"):
        pair = f"{credentials['username']}:{credentials.get('password', '')}".encode()
        signin = urllib.request.Request(  # noqa: S310
            f"{url}/api/v2/signin",
            method="POST",
            headers={"Authorization": "Basic " + base64.b64encode(pair).decode()},
        )
        with urllib.request.urlopen(signin, timeout=timeout_s) as answer:  # noqa: S310
            headers["Cookie"] = answer.headers.get("Set-Cookie", "").split(";", 1)[0]
    # Both names passed NAME above: no quote can end the literal or the identifier.
    where = f"\"machine_id\" = '{machine_id}'"
    query = f'SELECT count("value") FROM "{metric}" WHERE {where}'  # noqa: S608
    address = f"{url}/query?" + urllib.parse.urlencode({"db": database, "q": query})
    request = urllib.request.Request(address, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310
        document = json.loads(answer.read())
    result = document["results"][0]
    if "error" in result:
        raise InfluxQueryError(f"InfluxDB refused the query: {result['error']}")
    series = result.get("series") or []
    return int(series[0]["values"][0][1]) if series else 0
