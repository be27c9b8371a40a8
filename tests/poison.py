"""The shared poison corpus: what an attacker or a broken sensor sends, and what must follow.

Every entry point runs it (edge ingest over a real mosquitto, `iiot lake run`, the InfluxDB
writer and the alert router): a stream of good payloads with poisons between them. Each entry
point's test asserts the same four things:

* every good reading arrives exactly once (keys `(sensor_id, timestamp)` are unique in the
  stream, so counting them proves it);
* every bad item is quarantined or dead-lettered with a reason that contains `Poison.reason`;
* the process is alive afterwards;
* memory stays bounded: the `bomb` entries also run in a subprocess under an address-space
  limit (`run_limited`).

`known_poisons()` is the committed list of poisons seen in the wild or in review;
`poison_payloads()` is the hypothesis strategy that looks for new ones. A *shadow* pair is a
damaged copy of a good batch sent first, under the good batch's own id: integrity must be
checked before identity, or the good copy is dropped as a duplicate.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import textwrap
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import zstandard
from hypothesis import strategies as st

from iiot import wire
from iiot.contract import ReadingColumns, SeriesKey

FACTORY = "F01"
MACHINE = "F01-M001"
HOUR_MS = 3_600_000
ROOT = Path(__file__).resolve().parents[1]

ReadingKey = tuple[str, int]  # (sensor_id, timestamp)


# ------------------------------------------------------------------------------ good data


def good_readings(n: int, *, start_ms: int, sensor: int = 0, factory: str = FACTORY) -> list[dict]:
    """`n` valid temperature readings of one sensor, one per second from `start_ms`."""
    machine = f"{factory}-M{sensor // 5 + 1:03d}"
    sensor_id = f"{machine}-temperature-{sensor}"
    return [
        {
            "timestamp": start_ms + 1000 * i,
            "factory_id": factory,
            "machine_id": machine,
            "sensor_id": sensor_id,
            "metric": "temperature",
            "value": round(60.0 + (i % 50) * 0.25, 2),
            "unit": "degC",
        }
        for i in range(n)
    ]


def columns_of(readings: Sequence[dict]) -> ReadingColumns:
    lookup: dict[SeriesKey, int] = {}
    index = []
    for r in readings:
        key = SeriesKey(r["factory_id"], r["machine_id"], r["sensor_id"], r["metric"], r["unit"])
        index.append(lookup.setdefault(key, len(lookup)))
    return ReadingColumns(
        list(lookup),
        np.asarray(index, np.int32),
        np.asarray([r["timestamp"] for r in readings], np.int64),
        np.asarray([r["value"] for r in readings], np.float64),
    )


def good_batch(readings: Sequence[dict], batch_id: uuid.UUID | None = None) -> bytes:
    return wire.encode_batch(columns_of(readings), batch_id=batch_id, producer="poison-corpus")


def good_json(readings: Sequence[dict]) -> bytes:
    return json.dumps(list(readings)).encode()


def keys_of(readings: Sequence[dict]) -> set[ReadingKey]:
    return {(r["sensor_id"], r["timestamp"]) for r in readings}


# -------------------------------------------------------------------------------- poisons


@dataclass(frozen=True)
class Poison:
    """One hostile payload and what its consumer must say about it.

    `good` are the readings inside it that must still arrive (a list with one bad item);
    `bomb` marks a payload that costs memory when mishandled; `batch_id_of` names the good
    batch whose id a damaged copy reuses (a shadow). `edge_accepts` is True for payloads the
    edge stores (it de-duplicates by content, not by batch id), while the cloud refuses them.
    """

    name: str
    payload: bytes
    reason: str
    good: tuple[dict, ...] = ()
    bomb: bool = False
    edge_accepts: bool = False


def _with_header(payload: bytes, **changes: int) -> bytes:
    header = wire.read_header(payload)
    fields = {
        "version": header.version,
        "flags": header.flags,
        "count": header.readings,
        "body_length": header.body_length,
        "crc32": header.crc32,
    }
    fields.update(changes)
    return (
        wire.BATCH_MAGIC
        + bytes([fields["version"], fields["flags"], 0])
        + header.batch_id.bytes
        + fields["count"].to_bytes(4, "little")
        + fields["body_length"].to_bytes(4, "little")
        + fields["crc32"].to_bytes(4, "little")
        + payload[wire.HEADER_SIZE :]
    )


def _framed(body: bytes, *, count: int = 0, batch_id: uuid.UUID | None = None) -> bytes:
    return (
        wire.BATCH_MAGIC
        + bytes([wire.BATCH_VERSION, 1, 0])
        + (batch_id or uuid.uuid4()).bytes
        + count.to_bytes(4, "little")
        + len(body).to_bytes(4, "little")
        + zlib.crc32(body).to_bytes(4, "little")
        + body
    )


def zstd_bomb(decompressed_bytes: int = 250_000_000, *, content_size: bool = True) -> bytes:
    """A valid-looking compact batch whose body decompresses to `decompressed_bytes`: an empty
    batch with a producer name of that size, streamed so this process never holds it."""
    marker = "\x00MARK\x00"
    template = msgspec.msgpack.encode(
        {
            "producer": marker,
            "created_ms": 0,
            "first_seq": None,
            "last_seq": None,
            "series": [],
            "counts": ["<u4", b""],
            "decimals": ["|i1", b""],
            "ts_first": ["<i8", b""],
            "ts_delta": ["|i1", b""],
            "q_first": ["<i8", b""],
            "q_delta": ["|i1", b""],
            "raw_values": ["|u1", b""],
        }
    )
    at = template.index(marker.encode())
    prefix, suffix = template[: at - 1], template[at + len(marker) :]
    filler = decompressed_bytes - len(prefix) - len(suffix) - 5
    head = prefix + b"\xdb" + filler.to_bytes(4, "big")
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=content_size)
    stream = compressor.compressobj(size=decompressed_bytes if content_size else -1)
    parts = [stream.compress(head)]
    chunk = b"x" * (1 << 20)
    left = filler
    while left:
        piece = chunk if left >= len(chunk) else chunk[:left]
        parts.append(stream.compress(piece))
        left -= len(piece)
    parts.append(stream.compress(suffix))
    parts.append(stream.flush())
    return _framed(b"".join(parts))


def _non_utf8_batch() -> bytes:
    """A batch whose CRC is right but whose msgpack holds a string that is not UTF-8."""
    body = msgspec.msgpack.encode({"producer": "\x00MARK"})
    body = body.replace(b"\x00MARK", b"\xffMARK")
    return _framed(zstandard.ZstdCompressor().compress(body), count=0)


def known_poisons(now_ms: int) -> list[Poison]:
    """The committed list. Timestamps sit an hour before `now_ms` (inside the skew window)."""
    start = now_ms - HOUR_MS
    sample = good_readings(3, start_ms=start, sensor=90)
    batch = good_batch(good_readings(50, start_ms=start, sensor=91))
    body_at = wire.HEADER_SIZE
    flipped = bytearray(batch)
    flipped[body_at + 5] ^= 0x5A
    bad_item = [*good_readings(2, start_ms=start, sensor=92)]
    mixed = json.dumps([bad_item[0], {**bad_item[1], "value": 1e999}, "not a reading"])
    mixed_good = (bad_item[0],)
    return [
        Poison(
            "invalid UTF-8 inside a string",
            good_json(sample).replace(b'"F01"', b'"F\xff"', 1),
            "invalid UTF-8",
        ),
        Poison("invalid UTF-8 after a valid prefix", good_json(sample)[:-1] + b"\xc3]", "UTF-8"),
        Poison(
            "a lone UTF-16 surrogate escape",
            good_json(sample).replace(b'"F01"', b'"F\\ud800"', 1),
            "lone UTF-16 surrogate escape",
        ),
        Poison("batch with invalid UTF-8 inside its body", _non_utf8_batch(), "body:"),
        Poison("list nested 1,000 deep", b"[" * 1000 + b"]" * 1000, "nested 1000 deep"),
        Poison("object nested 1,000 deep", b'{"a":' * 1000 + b"1" + b"}" * 1000, "nested"),
        Poison(
            "a list of 4M numbers (8 MB)",
            b"[" + b"1," * 4_000_000 + b"1]",
            "exceeds the",
            bomb=True,
        ),
        Poison(
            "a list of 200K numbers under the byte limit",
            b"[" + b"1," * 200_000 + b"1]",
            "items exceed the limit",
            bomb=True,
        ),
        Poison("zstd bomb, size in the frame header", zstd_bomb(), "decompresses to", bomb=True),
        Poison(
            "zstd bomb, no size in the frame header",
            zstd_bomb(content_size=False),
            "does not record its decompressed size",
            bomb=True,
        ),
        Poison("truncated batch", batch[: len(batch) - 7], "truncated"),
        Poison("batch with a damaged body", bytes(flipped), "CRC-32 mismatch"),
        Poison(
            "batch announcing 4 billion readings",
            _with_header(batch, count=4_000_000_000),
            "announces 4000000000 readings",
            bomb=True,
        ),
        Poison("batch whose counts disagree", _with_header(batch, count=51), "counts add up"),
        Poison("batch of an unknown version", _with_header(batch, version=9), "version 9"),
        Poison("a header and nothing else", batch[: wire.HEADER_SIZE - 3], "shorter than"),
        Poison("binary garbage", bytes(range(1, 40)), "not valid JSON"),
        Poison("empty payload", b"", "not valid JSON"),
        Poison("JSON that is not a reading", b'"hello"', "expected a reading object"),
        Poison("a list with two bad items among good ones", mixed.encode(), "", good=mixed_good),
    ]


def shadow_copies(good_batch_payload: bytes) -> list[Poison]:
    """Damaged copies of a good batch that carry its batch id: sent before it, they must not
    make the good copy look like a duplicate."""
    flipped = bytearray(good_batch_payload)
    flipped[-3] ^= 0xFF
    header = wire.read_header(good_batch_payload)
    return [
        Poison("shadow: CRC-damaged copy", bytes(flipped), "CRC-32 mismatch"),
        Poison("shadow: truncated copy", good_batch_payload[:-11], "truncated"),
        # The CRC covers the body only: these two pass every header check, so only a consumer
        # that decodes before it de-duplicates tells them from the good copy.
        Poison(
            "shadow: header count that disagrees with the body",
            _with_header(good_batch_payload, count=header.readings + 1),
            "counts add up",
        ),
        Poison(
            "shadow: zstd bomb without a frame size under the good id",
            _framed(
                zstd_bomb(64 * 1024 * 1024, content_size=False)[wire.HEADER_SIZE :],
                batch_id=header.batch_id,
            ),
            "does not record its decompressed size",
            bomb=True,
        ),
    ]


def reused_id(batch_id: uuid.UUID, readings: Sequence[dict]) -> Poison:
    """A valid batch under another batch's id with other content: the cloud keys idempotency
    on the id, so it refuses the second content with a reason instead of dropping it."""
    return Poison(
        "batch id reused with other content",
        good_batch(readings, batch_id=batch_id),
        "reused",
        edge_accepts=True,
    )


# -------------------------------------------------------------------------------- streams


@dataclass
class Stream:
    """Good and bad payloads in the order a consumer receives them, and what must result."""

    payloads: list[bytes] = field(default_factory=list)
    poisons: list[tuple[int, Poison]] = field(default_factory=list)  # (position, poison)
    good: set[ReadingKey] = field(default_factory=set)  # must arrive exactly once
    good_readings: list[dict] = field(default_factory=list)
    edge_only_good: set[ReadingKey] = field(default_factory=set)  # edge stores these too

    def add_good(self, payload: bytes, readings: Sequence[dict]) -> None:
        self.payloads.append(payload)
        self.good |= keys_of(readings)
        self.good_readings.extend(readings)

    def add_poison(self, poison: Poison) -> None:
        self.poisons.append((len(self.payloads), poison))
        self.payloads.append(poison.payload)
        self.good |= keys_of(poison.good)
        self.good_readings.extend(poison.good)

    def expected_reasons(self, *, edge: bool = False) -> list[str]:
        return [p.reason for _, p in self.poisons if not (edge and p.edge_accepts)]


def build_stream(
    now_ms: int,
    *,
    good_payloads: int = 20,
    readings_per_payload: int = 50,
    include_bombs: bool = True,
    seed: int = 7,
) -> Stream:
    """Good JSON lists and compact batches with every known poison, shadow copies and a reused
    batch id between them, in a seeded order."""
    rng = random.Random(seed)
    start = now_ms - 2 * HOUR_MS
    stream = Stream()
    poisons = [p for p in known_poisons(now_ms) if include_bombs or not p.bomb]
    rng.shuffle(poisons)
    reused: uuid.UUID | None = None
    for i in range(good_payloads):
        readings = good_readings(readings_per_payload, start_ms=start, sensor=i)
        if i % 2:
            batch_id = uuid.UUID(int=rng.getrandbits(128))
            payload = good_batch(readings, batch_id=batch_id)
            if i % 4 == 1:
                for shadow in shadow_copies(payload):
                    stream.add_poison(shadow)
            reused = reused or batch_id
            stream.add_good(payload, readings)
        else:
            stream.add_good(good_json(readings), readings)
        if poisons:
            stream.add_poison(poisons.pop())
    for poison in poisons:
        stream.add_poison(poison)
    if reused is not None:
        other = good_readings(5, start_ms=start, sensor=99)
        poison = reused_id(reused, other)
        stream.add_poison(poison)
        stream.edge_only_good |= keys_of(other)
    return stream


# ----------------------------------------------------------------------------- hypothesis


def _mutations(payload: bytes) -> st.SearchStrategy[bytes]:
    n = len(payload)
    return st.one_of(
        st.integers(0, n - 1).map(lambda cut: payload[:cut]),
        st.tuples(st.integers(0, n - 1), st.integers(1, 255)).map(
            lambda d: payload[: d[0]] + bytes([payload[d[0]] ^ d[1]]) + payload[d[0] + 1 :]
        ),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=64)).map(
            lambda d: payload[: d[0]] + d[1] + payload[d[0] :]
        ),
    )


def poison_payloads(now_ms: int) -> st.SearchStrategy[bytes]:
    """Hostile payloads: damaged good batches and JSON, deep nests, invalid UTF-8, noise."""
    readings = good_readings(20, start_ms=now_ms - HOUR_MS, sensor=95)
    batch = good_batch(readings)
    text = good_json(readings)
    return st.one_of(
        _mutations(batch),
        _mutations(text),
        st.integers(9, 3000).map(lambda depth: b"[" * depth + b"]" * depth),
        st.tuples(
            st.integers(0, len(text) - 1), st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0"])
        ).map(lambda d: text[: d[0]] + d[1] + text[d[0] :]),
        st.binary(max_size=512),
        st.binary(max_size=256).map(lambda noise: wire.BATCH_MAGIC + noise),
    )


# ------------------------------------------------------------------- bounded subprocesses


def run_limited(
    code: str, *, address_space_mb: int, timeout_s: float = 120.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh Python under RLIMIT_AS: a consumer that inflates a bomb dies with
    MemoryError instead of passing. The limit covers the interpreter and its libraries too
    (about 110 MB of address space for the core with numpy on one BLAS thread)."""
    limit = address_space_mb * 1024 * 1024

    def limit_memory() -> None:  # runs in the child before exec
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    child_env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        preexec_fn=limit_memory,
        cwd=ROOT,
        env=child_env,
        check=False,
    )


def bombs(now_ms: int) -> Iterator[Poison]:
    yield from (p for p in known_poisons(now_ms) if p.bomb)


Check = Callable[[bytes], None]
