"""Each payload isolated: the shared poison corpus through `Ingestor.process`.

Whatever one payload holds (invalid UTF-8, deep nesting, bombs, damaged batches, or something
that makes validation raise), it is quarantined with its reason and every other payload of the
same micro-batch is stored; only a storage error leaves payloads unacknowledged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_buffer import ingest
from sensor_buffer.ingest import Incoming, Ingestor, micro_batch_share
from sensor_buffer.store import iter_stored

from iiot import wire
from iiot.catalog import MetricCatalog
from tests.edge.test_ingest import NOW_MS, make_ingestor, reading
from tests.poison import (
    Poison,
    build_stream,
    good_batch,
    good_json,
    good_readings,
    keys_of,
    known_poisons,
    poison_payloads,
)


def stored_keys(ingestor: Ingestor) -> list[tuple[str, int]]:
    return [(key.sensor_id, ts) for _, key, ts, _ in iter_stored(ingestor.store.path)]


def assert_quarantined_with_reasons(reasons: list[str], poisons: list[Poison]) -> None:
    """Every poison accounts for its own quarantine row, one whose reason contains the poison's
    (a matching, since one reason can contain several poisons' words)."""
    owner: dict[int, int] = {}  # reason index -> poison index

    def assign(p: int, tried: set[int]) -> bool:
        for r, reason in enumerate(reasons):
            if r not in tried and poisons[p].reason in reason:
                tried.add(r)
                if r not in owner or assign(owner[r], tried):
                    owner[r] = p
                    return True
        return False

    unmatched = [poisons[p].name for p in range(len(poisons)) if not assign(p, set())]
    assert not unmatched, (unmatched, reasons)


@pytest.mark.parametrize("poison", known_poisons(NOW_MS), ids=lambda p: p.name)
def test_a_poison_spoils_nothing_else_in_its_micro_batch(
    tmp_path: Path, catalog: MetricCatalog, poison: Poison
) -> None:
    ingestor = make_ingestor(tmp_path, catalog)
    before = good_readings(20, start_ms=NOW_MS - 3_000_000, sensor=1)
    after = good_readings(20, start_ms=NOW_MS - 2_000_000, sensor=2)
    acks: list[int] = []
    items = [
        Incoming("t", payload, NOW_MS, lambda: acks.append(1))
        for payload in (good_json(before), poison.payload, good_json(after))
    ]
    result = ingestor.process(items)
    assert len(acks) == 3  # all acknowledged: the broker never redelivers the poison
    assert sorted(stored_keys(ingestor)) == sorted(keys_of([*before, *after, *poison.good]))
    reasons = [q.reason for q in ingestor.store.quarantined()]
    assert result.quarantined == len(reasons) >= 1
    assert any(poison.reason in r for r in reasons), reasons


def test_the_whole_corpus_in_micro_batches_delivers_every_good_reading_once(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    stream = build_stream(NOW_MS)
    ingestor = make_ingestor(tmp_path, catalog)
    for start in range(0, len(stream.payloads), 7):
        ingestor.process([Incoming("t", p, NOW_MS) for p in stream.payloads[start : start + 7]])
    ingestor.process([Incoming("t", p, NOW_MS) for p in stream.payloads])  # a redelivery
    keys = stored_keys(ingestor)
    assert len(keys) == len(set(keys))
    assert set(keys) == stream.good | stream.edge_only_good
    reasons = [q.reason for q in ingestor.store.quarantined(limit=10_000)]
    assert_quarantined_with_reasons(reasons, [p for _, p in stream.poisons if not p.edge_accepts])


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(poison_payloads(NOW_MS), min_size=1, max_size=6))
def test_hypothesis_poisons_between_good_payloads(
    tmp_path_factory: pytest.TempPathFactory, catalog: MetricCatalog, poisons: list[bytes]
) -> None:
    ingestor = make_ingestor(tmp_path_factory.mktemp("poison"), catalog)
    validator = ingestor.validator
    good: list[dict] = []
    items = []
    for i, poison in enumerate(poisons):
        readings = good_readings(5, start_ms=NOW_MS - 3_000_000 + i * 10_000, sensor=40 + i)
        good.extend(readings)
        items += [Incoming("t", good_json(readings), NOW_MS), Incoming("t", poison, NOW_MS)]
    result = ingestor.process(items)
    expected_accepted = 0
    expected_rejects = 0
    for payload in dict.fromkeys(poisons):  # what the core says about each distinct poison
        outcome = wire.validate_payload(payload, validator)
        expected_accepted += outcome.accepted
        expected_rejects += len(outcome.rejects)
    keys = stored_keys(ingestor)
    assert keys_of(good) <= set(keys)
    assert result.stored == len(keys) == len(good) + expected_accepted
    assert result.quarantined == expected_rejects
    assert all(q.reason for q in ingestor.store.quarantined(limit=1000))
    ingestor.store.close()


def test_a_payload_that_makes_validation_raise_is_quarantined_alone(
    tmp_path: Path, catalog: MetricCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    cursed = b'[{"curse": 1}]'
    real = ingest.validate_json

    def validate(payload, validator, limits):
        if payload == cursed:
            raise RecursionError("maximum recursion depth exceeded")
        return real(payload, validator, limits)

    monkeypatch.setattr(ingest, "validate_json", validate)
    ingestor = make_ingestor(tmp_path, catalog)
    good = good_readings(10, start_ms=NOW_MS - 3_000_000)
    acks: list[int] = []
    items = [
        Incoming("t", p, NOW_MS, lambda: acks.append(1))
        for p in (cursed, good_json(good), b"not json")
    ]
    result = ingestor.process(items)
    assert len(acks) == 3
    assert sorted(stored_keys(ingestor)) == sorted(keys_of(good))
    rows = {q.payload: q.reason for q in ingestor.store.quarantined()}
    assert result.quarantined == len(rows) == 2
    assert "could not be validated (RecursionError: maximum recursion" in rows[cursed]
    assert "not valid JSON" in rows[b"not json"]


def test_a_fast_path_that_raises_hands_its_payloads_to_the_exact_path(
    tmp_path: Path, catalog: MetricCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_payload):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr(ingest, "_decode_loose_list", broken)
    ingestor = make_ingestor(tmp_path, catalog)
    good = good_readings(10, start_ms=NOW_MS - 3_000_000)
    result = ingestor.process([Incoming("t", good_json(good), NOW_MS)])
    assert result.stored == 10
    assert result.quarantined == 0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (json.dumps([reading(value=50.0 + i / 10) for i in range(11)]), "11 items exceed"),
        (json.dumps([{**reading(), "extra": [[[[[[[[1]]]]]]]]}]), "nested 10 deep"),
        (json.dumps([{**reading(), "note": "x"}])[:-2].encode() + b',"z":"\xff"}]', "UTF-8"),
        (json.dumps([reading()]) + " " * 2000, "bytes exceeds the 2000-byte limit"),
    ],
    ids=["items", "depth", "utf-8 in an unknown field", "bytes"],
)
def test_the_fast_path_never_accepts_what_the_limits_refuse(
    tmp_path: Path, catalog: MetricCatalog, payload: str | bytes, reason: str
) -> None:
    ingestor = make_ingestor(tmp_path, catalog)
    ingestor.limits = wire.Limits(max_items=10, max_payload_bytes=2000)
    raw = payload if isinstance(payload, bytes) else payload.encode()
    result = ingestor.process([Incoming("t", raw, NOW_MS)])
    assert result.stored == 0
    [row] = ingestor.store.quarantined()
    assert reason in row.reason


def test_a_thousand_poisons_then_good_data_still_gets_through(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    """The old stall: ~1,000 unacknowledged poisons (the broker's in-flight window) and no good
    reading got through again. Now every payload is acknowledged."""
    ingestor = make_ingestor(tmp_path, catalog)
    sample = good_json(good_readings(3, start_ms=NOW_MS - 3_000_000, sensor=90))
    poisons = [
        sample.replace(b'"F01"', b'"F\xff' + str(i).encode() + b'"', 1)
        if i % 2
        else b"[" * (1000 + i) + b"]" * (1000 + i)
        for i in range(1200)
    ]
    acks: list[int] = []
    for start in range(0, len(poisons), 100):
        ingestor.process(
            [Incoming("t", p, NOW_MS, lambda: acks.append(1)) for p in poisons[start : start + 100]]
        )
    assert len(acks) == 1200
    good = good_readings(50, start_ms=NOW_MS - 2_000_000, sensor=3)
    assert ingestor.process([Incoming("t", good_json(good), NOW_MS)]).stored == 50
    assert ingestor.store.counters["quarantined"] == 1200


def test_a_micro_batch_that_cannot_commit_stays_unacknowledged_then_lands_once(
    tmp_path: Path, catalog
) -> None:
    ingestor = make_ingestor(tmp_path, catalog)
    store = ingestor.store
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")
    acks: list[int] = []
    payloads = [
        json.dumps([reading(timestamp=NOW_MS - 60_000 + i, value=50.0 + i / 10)]).encode()
        for i in range(300)
    ] + [b"\xff not json", b"[" * 1000 + b"]" * 1000]
    items = [Incoming("t", p, NOW_MS, lambda: acks.append(1)) for p in payloads]
    with pytest.raises(Exception, match="full"):
        ingestor.process(items)
    assert acks == []  # the broker will redeliver them
    store._db.execute("PRAGMA max_page_count=1073741823")
    result = ingestor.process(items)  # the redelivery
    assert (result.stored, result.quarantined, result.duplicates) == (300, 2, 0)
    assert len(acks) == len(payloads)
    assert len(list(iter_stored(store.path))) == 300
    assert ingestor.process(items).duplicates == len(payloads)  # and never twice


def test_a_payload_refused_unread_never_sizes_a_micro_batch() -> None:
    limits = wire.DEFAULT_LIMITS
    by_name = {p.name: p.payload for p in known_poisons(NOW_MS)}
    for name in (
        "a list of 4M numbers (8 MB)",
        "batch announcing 4 billion readings",
        "batch with a damaged body",
        "truncated batch",
    ):
        assert micro_batch_share(by_name[name], limits) == 1, name
    good = good_readings(50, start_ms=NOW_MS - 3_000_000)
    assert micro_batch_share(good_batch(good), limits) == 50
    assert micro_batch_share(good_json(good), limits) == wire.announced_readings(good_json(good))


def test_an_oversized_payload_is_recognised_when_redelivered(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    ingestor = make_ingestor(tmp_path, catalog)
    huge = b"[" + b"1," * 1_000_000 + b"1]"
    assert ingestor.process([Incoming("t", huge, NOW_MS)]).quarantined == 1
    again = ingestor.process([Incoming("t", huge, NOW_MS)])
    assert (again.duplicates, again.quarantined) == (1, 0)
    other = huge + b" "  # another oversized payload: a reject of its own
    assert ingestor.process([Incoming("t", other, NOW_MS)]).quarantined == 1
    # Identified by its length and the head the quarantine keeps, not by hashing megabytes:
    # one differing only further on counts as the same reject (refused whole either way).
    tail = huge[:-2] + b"2]"
    assert ingestor.process([Incoming("t", tail, NOW_MS)]).duplicates == 1
    assert ingestor.store.backlog().readings == 0
