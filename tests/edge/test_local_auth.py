"""Authenticated local input: a real mosquitto with a password file (and TLS) refuses anonymous
clients, and the buffer (`iiot edge run`) works with its credentials under an unguessable,
restart-stable client id that another client cannot take over."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from sensor_buffer.cli import PASSWORD_ENV, _password, app
from typer.testing import CliRunner

from edge_runtime.mqtt import MqttSecurity, parse_broker
from iiot.topics import SENSOR_DATA
from local_platform.localbroker import BrokerTls
from tests.edge.mqtt_helpers import Collector, close, connect, uploaded, wait_for
from tests.poison import FACTORY, good_json, good_readings, keys_of

USERS = {"buffer": "buffer-secret", "sensor": "sensor-secret"}


@pytest.mark.slow
def test_the_broker_refuses_anonymous_clients_and_wrong_passwords(broker_factory) -> None:
    broker = broker_factory(users=USERS)
    for username, password in ((None, None), ("buffer", "guess"), ("nobody", "x")):
        client, reason = connect(broker.port, username=username, password=password)
        close(client)
        assert reason in ("Not authorized", "Bad user name or password"), (username, reason)
    client, reason = connect(broker.port, username="sensor", password=USERS["sensor"])
    close(client)
    assert reason == "Success"


def run_buffer_against(
    local, cloud, component_factory, tmp_path: Path, tls_args: list[str], sensor_tls
) -> None:
    """Readings published by an authenticated sensor arrive upstream exactly once, while a
    client with the old predictable id tries to take the buffer's session."""
    password_file = tmp_path / "buffer-password"
    password_file.write_text(USERS["buffer"] + "\n")
    password_file.chmod(0o600)
    collector = Collector(cloud.port, (SENSOR_DATA,), "cloud-auth")
    component = component_factory(
        local.url,
        cloud.url,
        "--username",
        "buffer",
        "--password-file",
        str(password_file),
        *tls_args,
    )
    component.start()
    tls_kwargs = {"tls": sensor_tls, "client_cert": "--cert-file" in tls_args}
    readings = good_readings(200, start_ms=int(time.time() * 1000) - 3_600_000, sensor=7)
    try:
        status, reason = connect(
            local.port, username="sensor", password=USERS["sensor"], **tls_kwargs
        )
        assert reason == "Success"
        seen = threading.Event()
        status.on_message = lambda *_args: seen.set()
        status.subscribe(f"factory/{FACTORY}/gateway/status", qos=0)
        wait_for(seen.is_set, 30, "the buffer's first status on the authenticated broker")
        # Before this change the input client id was sensor-buffer-F01-gateway-in: a client
        # taking it over received, and acknowledged, the readings queued for the buffer.
        thief, reason = connect(
            local.port,
            client_id=f"sensor-buffer-{FACTORY}-gateway-in",
            username="sensor",
            password=USERS["sensor"],
            clean_start=False,
            **tls_kwargs,
        )
        assert reason == "Success"
        thief.subscribe(f"factory/{FACTORY}/readings", qos=1)
        for start in range(0, 200, 20):
            status.publish(
                f"factory/{FACTORY}/readings", good_json(readings[start : start + 20]), qos=1
            ).wait_for_publish(10)
        expected = keys_of(readings)

        def arrived() -> bool:
            return {(k[0][2], k[1]) for k in uploaded(collector.batches())} == expected

        wait_for(arrived, 60, "every reading uploaded")
        assert sum(uploaded(collector.batches()).values()) == len(expected)
        close(thief)
        close(status)
    finally:
        component.stop()
        collector.close()
    client_id = (component.data_dir / "mqtt-client-id").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{16}", client_id)
    log = local.log_path.read_text()
    assert f"as sensor-buffer-{FACTORY}-gateway-{client_id}-in" in log
    assert "u'buffer'" in log


@pytest.mark.slow
def test_the_buffer_works_with_credentials_over_tls(
    broker_factory, component_factory, tls_files, tmp_path: Path
) -> None:
    tls = BrokerTls(tls_files.ca, tls_files.server_cert, tls_files.server_key)
    local = broker_factory(users=USERS, tls=tls)
    assert local.url.startswith("mqtts://")
    anonymous, reason = connect(local.port, tls=tls_files)
    close(anonymous)
    assert reason == "Not authorized"
    run_buffer_against(
        local,
        broker_factory(persistent=True),
        component_factory,
        tmp_path,
        ["--ca-file", str(tls_files.ca)],
        tls_files,
    )


@pytest.mark.slow
def test_the_buffer_presents_a_client_certificate_when_the_broker_requires_one(
    broker_factory, component_factory, tls_files, tmp_path: Path
) -> None:
    tls = BrokerTls(
        tls_files.ca, tls_files.server_cert, tls_files.server_key, require_certificate=True
    )
    local = broker_factory(users=USERS, tls=tls)
    run_buffer_against(
        local,
        broker_factory(persistent=True),
        component_factory,
        tmp_path,
        [
            "--ca-file",
            str(tls_files.ca),
            "--cert-file",
            str(tls_files.client_cert),
            "--key-file",
            str(tls_files.client_key),
        ],
        tls_files,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ca-file", "ca.pem"], "need a TLS broker URL (mqtts://...)"),
        (["--broker", "mqtts://127.0.0.1:8883", "--ca-file", "missing.pem"], "no such file"),
        (["--broker", "mqtts://127.0.0.1:8883", "--cert-file", "c.pem"], "both --cert-file"),
        (["--password-file", "pw"], "a password needs a username"),
        (["--username", "u", "--password-file", "nowhere"], "--password-file nowhere: cannot"),
    ],
)
def test_the_cli_refuses_incomplete_security_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("ca.pem", "c.pem", "pw"):
        (tmp_path / name).write_text("x\n")
    result = CliRunner().invoke(app, ["run", "--factory", "F1", "--data-dir", "d", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_the_password_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    assert _password(None) is None
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert _password(None) == "from-env"
    secret = tmp_path / "pw"
    secret.write_text("from-file\nignored\n")
    assert _password(secret) == "from-file"
    assert "from-file" not in repr(MqttSecurity(username="u", password="from-file"))
    assert parse_broker("mqtts://127.0.0.1").port == 8883
