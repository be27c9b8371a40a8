"""The poison corpus against the core's decoders: integrity first, never a raise, bounded memory.

The entry points (edge, lake, Lambdas) run the same corpus end to end in their own tests.
"""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings

from iiot import wire
from iiot.contract import Validator
from tests.poison import (
    build_stream,
    good_batch,
    good_readings,
    known_poisons,
    poison_payloads,
    run_limited,
    shadow_copies,
)

NOW_MS = int(time.time() * 1000)


@pytest.fixture(scope="module")
def validator(catalog):
    return Validator(catalog)


@pytest.mark.parametrize("poison", known_poisons(NOW_MS), ids=lambda p: p.name)
def test_every_known_poison_is_refused_with_its_reason(poison, validator):
    outcome = wire.validate_payload(poison.payload, validator)
    assert outcome.accepted == len(poison.good)
    assert outcome.rejects, "a poison must leave a reject behind"
    assert all(reject.reason for reject in outcome.rejects)
    assert any(poison.reason in reject.reason for reject in outcome.rejects), [
        r.reason for r in outcome.rejects
    ]
    assert all(len(reject.payload) <= 64 * 1024 for reject in outcome.rejects)


def test_integrity_comes_before_identity():
    readings = good_readings(10, start_ms=NOW_MS - 3_600_000)
    payload = good_batch(readings)
    good_id = wire.verified_batch_id(payload)
    shadows = shadow_copies(payload)
    for shadow in shadows:
        assert wire.read_header(shadow.payload).batch_id == good_id  # it claims the same id
        with pytest.raises(wire.WireFormatError, match=shadow.reason):
            wire.decode_batch(shadow.payload)
    # The cheap header checks catch damage to the body; a header that lies about its body is
    # caught only by decoding, so consumers decode before they de-duplicate.
    for shadow in shadows[:2]:
        with pytest.raises(wire.WireFormatError, match=shadow.reason):
            wire.verified_batch_id(shadow.payload)
    assert wire.batch_integrity_problem(payload) is None


def test_limits_are_configurable_and_checked():
    tight = wire.Limits(max_items=3, max_depth=2)
    payload = json.dumps(good_readings(4, start_ms=NOW_MS - 3_600_000)).encode()
    decoded = wire.decode_json(payload, tight)
    assert "4 items exceed the limit of 3" in decoded.rejects[0].reason
    assert wire.decode_json(payload).readings
    envelope = json.dumps({"v": 1, "readings": good_readings(2, start_ms=NOW_MS)}).encode()
    assert (
        "nested 3 deep exceeds the limit of 2"
        in wire.decode_json(envelope, tight).rejects[0].reason
    )
    with pytest.raises(ValueError, match="max_items: must be a positive integer"):
        wire.Limits(max_items=0)


def test_brackets_and_commas_inside_strings_do_not_count(validator):
    reading = good_readings(1, start_ms=NOW_MS - 3_600_000)[0]
    quoted = {**reading, "unit": '[[[[[[[[[,,,,\\"]]]'}
    decoded = wire.decode_json(json.dumps([quoted] * 2).encode(), wire.Limits(max_items=2))
    assert not any("nested" in r.reason or "items" in r.reason for r in decoded.rejects)


def test_a_stream_with_every_poison_keeps_every_good_reading(validator):
    stream = build_stream(NOW_MS)
    accepted = 0
    reasons = []
    for payload in stream.payloads:
        outcome = wire.validate_payload(payload, validator)
        accepted += outcome.accepted
        reasons.extend(r.reason for r in outcome.rejects)
    # The core does not de-duplicate: the reused id's other content is valid at this level.
    assert accepted == len(stream.good) + len(stream.edge_only_good)
    for expected in stream.expected_reasons(edge=True):
        assert any(expected in reason for reason in reasons), expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(poison_payloads(NOW_MS))
def test_no_payload_makes_the_decoders_raise(validator, payload):
    outcome = wire.validate_payload(payload, validator)
    assert outcome.accepted + len(outcome.rejects) >= 1 or payload[:1] in (b"[", b"{")
    assert all(reject.reason for reject in outcome.rejects)


@pytest.mark.slow
def test_bombs_are_refused_within_an_address_space_limit():
    """Each bomb decoded in a fresh interpreter limited to 320 MB of address space (about 110 MB
    is the interpreter with numpy): inflating any of them would raise MemoryError there."""
    result = run_limited(
        """
        import time
        from iiot.catalog import load_catalog
        from iiot.contract import Validator
        from iiot import wire
        from tests.poison import bombs
        validator = Validator(load_catalog())
        for poison in bombs(int(time.time() * 1000)):
            outcome = wire.validate_payload(poison.payload, validator)
            assert outcome.accepted == 0, poison.name
            assert poison.reason in outcome.rejects[0].reason, (poison.name, outcome.rejects[0])
            print("refused:", poison.name)
        """,
        address_space_mb=320,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("refused:") == 5
