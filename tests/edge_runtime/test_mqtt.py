"""The MQTT 5 transport's own pieces: the session client id and the broker URL."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_runtime.mqtt import parse_broker, session_client_id


def test_the_client_id_is_unguessable_and_survives_restarts(tmp_path: Path) -> None:
    first = session_client_id(tmp_path / "a", "sensor-buffer-F01-gw")
    assert re.fullmatch(r"sensor-buffer-F01-gw-[0-9a-f]{16}", first)
    assert session_client_id(tmp_path / "a", "sensor-buffer-F01-gw") == first  # a restart
    assert session_client_id(tmp_path / "b", "sensor-buffer-F01-gw") != first  # another buffer
    assert (tmp_path / "a" / "mqtt-client-id").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1", ("127.0.0.1", 1883, False)),
        ("mqtts://gateway.local", ("gateway.local", 8883, True)),
        ("mqtt://127.0.0.1:18830", ("127.0.0.1", 18830, False)),
    ],
)
def test_broker_urls_default_the_port_by_scheme(url: str, expected: tuple) -> None:
    assert tuple(parse_broker(url)) == expected


def test_a_broker_url_that_is_not_mqtt_is_refused_with_an_example() -> None:
    with pytest.raises(ValueError, match=r"mqtt://127\.0\.0\.1:1883"):
        parse_broker("127.0.0.1:1883")
