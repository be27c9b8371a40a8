"""The two wire formats of the reading contract, both versioned.

**JSON (version 1)**: the source case study's shape. A payload is one reading object, a list of
them, or an envelope ``{"v": 1, "readings": [...]}``; any other ``v`` is refused. The legacy key
``metric_type`` is read as ``metric``. Timestamps are integer milliseconds, UTC.

**Compact batch (version 1)**: what gateways upload. Columnar, zstd-compressed, with a 16-byte
batch id (the idempotency key: a consumer drops a batch id it has seen) and a CRC-32 of the
compressed body. Layout (little-endian)::

    magic "IIOTB" | version u8 | flags u8 | reserved u8 | batch_id 16B | count u32
    | body_length u32 | crc32(body) u32 | body = zstd(msgpack(_BatchBody))

The header is 36 bytes; the body is one zstd frame that records its decompressed size.

Inside, readings are grouped by series and sorted by time; timestamps and values travel as
per-series first values plus narrow integer deltas. A series whose values are all exact decimals
with few places (sensor resolutions from the catalog) stores them as scaled integers, which is
lossless (checked bit for bit when encoding); any other series stores raw float64 bytes,
byte-shuffled. Readings come back grouped by series: order within a batch is not kept.

**Integrity before identity.** Every consumer checks a payload's integrity before it trusts
anything the payload says about itself (its batch id above all): size, decompressed size
(bounded *before* decompressing, from the zstd frame header), CRC-32, UTF-8, nesting depth and
item count, against `Limits`. Only a payload that passes may be de-duplicated by its id, so a
damaged copy that arrives first can never shadow the good one. `batch_integrity_problem` and
`json_integrity_problem` say what is wrong (or None) without raising and without allocating more
than a small multiple of the payload; `decode_batch`/`decode_json` apply them first.
"""

from __future__ import annotations

import json
import re
import struct
import threading
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt
import zstandard

from iiot.contract import (
    Float64Array,
    Int64Array,
    Reading,
    ReadingColumns,
    Reject,
    SeriesKey,
    Validated,
    Validator,
)

JSON_VERSION = 1
BATCH_VERSION = 1
BATCH_MAGIC = b"IIOTB"
_HEADER = struct.Struct("<5sBBB16sIII")
HEADER_SIZE = _HEADER.size  # 36 bytes
_FLAG_ZSTD = 0x01
_MAX_DECIMALS = 6
_MAX_PRODUCER_CHARS = 256
_QUARANTINE_PAYLOAD_CAP = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one payload may cost a consumer. Anything beyond is rejected whole, with the limit.

    The defaults hold every payload the platform produces with a wide margin (a gateway's upload
    batch is at most 128 KiB, IoT Core's message limit, and about 20,000 readings; sensors send
    lists of tens to hundreds of readings) while keeping one payload's decoding within tens of
    megabytes: `bench/poison.py` measures the peak under the worst payload.
    """

    max_payload_bytes: int = 1024 * 1024  # JSON text, or a batch's compressed bytes
    max_items: int = 10_000  # readings in one JSON payload
    max_depth: int = 8  # JSON nesting; a reading envelope needs 3
    max_batch_readings: int = 1_000_000  # readings one compact batch may announce
    max_decompressed_bytes: int = 32 * 1024 * 1024  # a batch body after zstd

    def __post_init__(self) -> None:
        for name in (
            "max_payload_bytes",
            "max_items",
            "max_depth",
            "max_batch_readings",
            "max_decompressed_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")


DEFAULT_LIMITS = Limits()
MAX_JSON_PAYLOAD_BYTES = DEFAULT_LIMITS.max_payload_bytes


class WireFormatError(ValueError):
    """A payload is not in a format this release can read."""


# ---------------------------------------------------------------------------------- integrity

_BRACKET_DELTA = np.zeros(256, dtype=np.int32)
_BRACKET_DELTA[[ord("["), ord("{")]] = 1
_BRACKET_DELTA[[ord("]"), ord("}")]] = -1
_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b'[]{}",')
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _utf8_problem(payload: bytes) -> str | None:
    if payload.isascii():
        return None
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"payload: invalid UTF-8 at byte {exc.start} ({exc.reason})"
    return None


_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _surrogate_problem(payload: bytes) -> str | None:
    """A lone UTF-16 surrogate escape ("\\ud800") decodes to a str no UTF-8 encoder accepts."""
    if b"\\u" not in payload:
        return None
    found = _LONE_SURROGATE.search(payload)
    if found is None:
        return None
    return f"payload: lone UTF-16 surrogate escape {found.group().decode()} at byte {found.start()}"


def json_integrity_problem(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> str | None:
    """Why a JSON payload must be rejected whole before parsing, or None.

    Checks size, UTF-8, nesting depth and the number of items (readings at the payload's item
    level). The byte counts give cheap upper bounds; only a payload near a limit gets the exact,
    string-aware scan (numpy over the bytes, a few bytes of memory per payload byte).
    """
    if len(payload) > limits.max_payload_bytes:
        return (
            f"payload: {len(payload)} bytes exceeds the {limits.max_payload_bytes}-byte limit; "
            "split it into smaller messages"
        )
    problem = _utf8_problem(payload) or _surrogate_problem(payload)
    if problem:
        return problem
    opens = payload.count(b"[") + payload.count(b"{")
    commas = payload.count(b",")
    if opens <= limits.max_depth and commas < limits.max_items:
        return None  # neither limit can be reached
    depth, items = _json_shape(payload)
    if depth > limits.max_depth:
        return f"payload: JSON nested {depth} deep exceeds the limit of {limits.max_depth}"
    if items > limits.max_items:
        return (
            f"payload: {items} items exceed the limit of {limits.max_items} readings per "
            "payload; split it into smaller messages"
        )
    return None


def _json_shape(payload: bytes) -> tuple[int, int]:
    """(maximum nesting depth, items at the reading level) outside JSON strings."""
    # Item level: readings sit at depth 1 in a list, at depth 2 in an envelope {"readings": []}.
    item_depth = 1 if payload.lstrip()[:1] == b"[" else 2
    if b"\\" in payload:
        payload = _JSON_STRING.sub(b'""', payload)
    # Only brackets, quotes and commas decide the shape: scan that skeleton, not every byte.
    # A string without brackets or commas inside becomes '""' in the skeleton: drop those, and
    # only strings that do hold such characters need the quote-parity pass below.
    skeleton = payload.translate(None, _NOT_STRUCTURAL).replace(b'""', b"")
    data = np.frombuffer(skeleton, dtype=np.uint8)
    delta = _BRACKET_DELTA.take(data)  # int32 in, int32 out: numpy's fast accumulate path
    separators = data == ord(",")
    if b'"' in skeleton:
        outside = (np.cumsum((data == ord('"')).view(np.uint8)) & 1) == 0
        delta *= outside
        separators &= outside
    depth = np.cumsum(delta)
    max_depth = int(depth.max()) if len(depth) else 0
    items = int(np.count_nonzero(separators & (depth == item_depth)))
    return max_depth, items + (1 if max_depth >= item_depth else 0)


class BatchHeader(NamedTuple):
    """The fixed-size header of a compact batch (the only place that knows its layout)."""

    magic: bytes
    version: int
    flags: int
    batch_id: uuid.UUID
    readings: int
    body_length: int
    crc32: int

    @property
    def size(self) -> int:
        """Bytes the whole batch takes: header plus the body it announces."""
        return HEADER_SIZE + self.body_length


def read_header(payload: bytes) -> BatchHeader:
    """The header of a compact batch; WireFormatError when it is short or not a batch."""
    if len(payload) < HEADER_SIZE:
        raise WireFormatError(
            f"header: {len(payload)} bytes is shorter than the {HEADER_SIZE}-byte batch header"
        )
    magic, version, flags, _, batch_id, count, body_length, checksum = _HEADER.unpack_from(payload)
    if magic != BATCH_MAGIC:
        raise WireFormatError("header: not a compact batch (missing IIOTB magic)")
    return BatchHeader(
        magic, version, flags, uuid.UUID(bytes=batch_id), count, body_length, checksum
    )


def announced_readings(payload: bytes) -> int:
    """What a payload claims to carry before any decoding (to size micro-batches): a batch's
    header count, else the JSON's `"timestamp"` keys (every reading has exactly one; counting
    them runs at memory speed). Never trusted beyond sizing."""
    if is_batch(payload) and len(payload) >= HEADER_SIZE:
        return max(1, int(_HEADER.unpack_from(payload)[5]))
    return max(1, payload.count(b'"timestamp"'))


def _verified_header(payload: bytes, limits: Limits) -> BatchHeader:
    header = read_header(payload)
    if header.version != BATCH_VERSION:
        raise WireFormatError(
            f"header: batch format version {header.version} is not supported (this release "
            f"reads {BATCH_VERSION})"
        )
    if len(payload) > limits.max_payload_bytes:
        raise WireFormatError(
            f"payload: {len(payload)} bytes exceeds the {limits.max_payload_bytes}-byte limit"
        )
    if header.readings > limits.max_batch_readings:
        raise WireFormatError(
            f"header: announces {header.readings} readings, more than the limit of "
            f"{limits.max_batch_readings} per batch"
        )
    body = memoryview(payload)[HEADER_SIZE:]
    if len(body) != header.body_length:
        raise WireFormatError(
            f"body: {len(body)} bytes, the header announces {header.body_length} "
            "(truncated or padded)"
        )
    if zlib.crc32(body) != header.crc32:
        raise WireFormatError("body: CRC-32 mismatch, the batch was corrupted in transit")
    if header.flags & _FLAG_ZSTD:
        try:
            content_size = zstandard.frame_content_size(body)
        except zstandard.ZstdError as exc:
            raise WireFormatError(f"body: not a zstd frame ({exc})") from exc
        if content_size < 0:
            # `encode_batch` always records the size; without it the only way to learn it is
            # to decompress up to the limit, which would let a 2 KB payload cost 32 MB of work.
            raise WireFormatError(
                "body: the zstd frame does not record its decompressed size (version 1 "
                "batches always do)"
            )
        if content_size > limits.max_decompressed_bytes:
            raise WireFormatError(
                f"body: decompresses to {content_size} bytes, more than the limit of "
                f"{limits.max_decompressed_bytes}"
            )
    return header


def batch_integrity_problem(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> str | None:
    """Why a compact batch fails its integrity checks (header, size, CRC-32, announced
    decompressed size), or None. Cheap: nothing is decompressed."""
    try:
        _verified_header(payload, limits)
    except WireFormatError as exc:
        return str(exc)
    return None


def verified_batch_id(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> uuid.UUID:
    """The batch id, only once the batch passed its integrity checks (the de-duplication key);
    WireFormatError with the reason otherwise."""
    return _verified_header(payload, limits).batch_id


# --------------------------------------------------------------------------------------- JSON


class _LegacyReading(msgspec.Struct, frozen=True, gc=False):
    """The case study's field name for the metric, accepted on input only."""

    timestamp: Any
    factory_id: Any
    machine_id: Any
    sensor_id: Any
    metric_type: Any
    value: Any
    unit: Any


_decode_list = msgspec.json.Decoder(list[Reading]).decode
_decode_one = msgspec.json.Decoder(Reading).decode
_decode_raw_list = msgspec.json.Decoder(list[msgspec.Raw]).decode
_decode_raw_object = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_json_encoder = msgspec.json.Encoder()


def encode_json(readings: Sequence[Reading], *, envelope: bool = True) -> bytes:
    """Encode readings as JSON version 1: the envelope, or a bare list as the case study sends."""
    if envelope:
        return _json_encoder.encode({"v": JSON_VERSION, "readings": readings})
    return _json_encoder.encode(readings)


def _field_error(exc: msgspec.ValidationError) -> str:
    """msgspec says "Expected `int`, got `str` - at `$.timestamp`": name the field first."""
    message = str(exc)
    head, sep, where = message.partition(" - at `$")
    path = where.rstrip("`").lstrip(".") if sep else ""
    if head.startswith("Object missing required field `"):
        missing = head.split("`")[1]
        return f"{missing}: missing required field"
    head = head.replace("`", "")
    head = head[:1].lower() + head[1:]
    return f"{path}: {head}" if path else head


def _truncate(payload: bytes) -> bytes:
    return payload if len(payload) <= _QUARANTINE_PAYLOAD_CAP else payload[:_QUARANTINE_PAYLOAD_CAP]


@dataclass
class DecodedJson:
    """Structurally valid readings with their raw JSON and payload positions, plus rejects.

    `raws` and `positions` are empty when the fast path decoded the whole payload at once.
    """

    readings: list[Reading]
    raws: list[bytes]
    positions: list[int]
    rejects: list[Reject]


def _reject_payload(reason: str, payload: bytes) -> DecodedJson:
    return DecodedJson([], [], [], [Reject(reason, _truncate(payload), None)])


def decode_json(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> DecodedJson:
    """Decode a JSON payload into readings and structural rejects; never raises.

    Integrity first (`json_integrity_problem`): a payload over a limit, with invalid UTF-8 or
    nested too deep is one whole-payload reject. Then a bad item never spoils the others: the
    fast path decodes the whole list at once, and only when that fails is each item decoded
    alone to name what is wrong with it.
    """
    problem = json_integrity_problem(payload, limits)
    if problem:
        return _reject_payload(problem, payload)
    try:
        return _decode_json_checked(payload)
    except (RecursionError, UnicodeDecodeError, ValueError, TypeError) as exc:
        # Defence in depth: the checks above are meant to make this unreachable.
        return _reject_payload(f"payload: cannot be decoded ({type(exc).__name__}: {exc})", payload)


def _decode_json_checked(payload: bytes) -> DecodedJson:
    first = payload.lstrip()[:1]
    if first == b"[":
        try:
            return DecodedJson(_decode_list(payload), [], [], [])
        except msgspec.ValidationError:
            pass  # some item is wrong: decode item by item to say which and why
        except msgspec.DecodeError:
            return _decode_json_lenient(payload)
        try:
            return _decode_items(_decode_raw_list(payload))
        except msgspec.DecodeError:
            return _decode_json_lenient(payload)
    if first == b"{":
        try:
            return DecodedJson([_decode_one(payload)], [], [], [])
        except msgspec.DecodeError:
            pass  # an envelope, the case study's spelling, or a bad reading: look closer
        try:
            head = _decode_raw_object(payload)
        except msgspec.DecodeError:
            return _decode_json_lenient(payload)
        return _decode_object(head, payload)
    try:
        msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return _decode_json_lenient(payload)
    return _reject_payload("payload: expected a reading object or a list of them", payload)


def _decode_object(head: dict[str, msgspec.Raw], payload: bytes) -> DecodedJson:
    if "readings" in head or "v" in head:
        version = msgspec.json.decode(head.get("v", b"null"))
        if version != JSON_VERSION:
            return _reject_payload(
                f"v: JSON format version {version!r} is not supported (this release reads "
                f"{JSON_VERSION})",
                payload,
            )
        try:
            items = msgspec.json.decode(head.get("readings", b"null"), type=list[msgspec.Raw])
        except msgspec.ValidationError:
            return _reject_payload("readings: expected a list of reading objects", payload)
        return _decode_items(items)
    return _decode_items([msgspec.Raw(payload)])


def _decode_items(items: Sequence[msgspec.Raw]) -> DecodedJson:
    decoded = DecodedJson([], [], [], [])
    for position, item in enumerate(items):
        raw = bytes(item)
        try:
            reading = _decode_one(raw)
        except msgspec.ValidationError as exc:
            legacy = _from_legacy(raw)
            if legacy is None:
                decoded.rejects.append(Reject(_field_error(exc), _truncate(raw), position))
                continue
            reading = legacy
        decoded.readings.append(reading)
        decoded.raws.append(raw)
        decoded.positions.append(position)
    return decoded


def _from_legacy(raw: bytes) -> Reading | None:
    """Read the case study's `metric_type` spelling; None when it is not that either."""
    try:
        legacy = msgspec.json.decode(raw, type=_LegacyReading)
        return msgspec.convert(
            {
                "timestamp": legacy.timestamp,
                "factory_id": legacy.factory_id,
                "machine_id": legacy.machine_id,
                "sensor_id": legacy.sensor_id,
                "metric": legacy.metric_type,
                "value": legacy.value,
                "unit": legacy.unit,
            },
            Reading,
        )
    except msgspec.ValidationError:
        return None


_NON_FINITE_LITERAL = re.compile(rb"NaN|Infinity")


def _decode_json_lenient(payload: bytes) -> DecodedJson:
    """Not strict JSON: Python's parser also reads NaN/Infinity, so such readings are named.
    Without those literals there is nothing more to learn: say where the syntax breaks."""
    if _NON_FINITE_LITERAL.search(payload) is None:
        try:
            msgspec.json.decode(payload)
        except msgspec.ValidationError:
            pass  # well-formed, e.g. a number out of range: Python's parser names the item
        except msgspec.DecodeError as exc:
            return _reject_payload(f"payload: not valid JSON ({exc})", payload)
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        return _reject_payload(f"payload: not valid JSON ({exc})", payload)
    if isinstance(document, dict) and ("readings" in document or "v" in document):
        if document.get("v") != JSON_VERSION:
            return _reject_payload(
                f"v: JSON format version {document.get('v')!r} is not supported", payload
            )
        document = document.get("readings")
    items = document if isinstance(document, list) else [document]
    decoded = DecodedJson([], [], [], [])
    for position, item in enumerate(items):
        raw = json.dumps(item, allow_nan=True).encode()
        try:
            if isinstance(item, dict) and "metric" not in item and "metric_type" in item:
                item = {**item, "metric": item["metric_type"]}
            reading = msgspec.convert(item, Reading)
        except msgspec.ValidationError as exc:
            decoded.rejects.append(Reject(_field_error(exc), _truncate(raw), position))
            continue
        decoded.readings.append(reading)
        decoded.raws.append(raw)
        decoded.positions.append(position)
    return decoded


def validate_json(
    payload: bytes, validator: Validator, limits: Limits = DEFAULT_LIMITS
) -> Validated:
    """Decode and validate a JSON payload: accepted readings plus every reject with its reason."""
    decoded = decode_json(payload, limits)
    if not decoded.readings:
        return Validated(readings=[], rejects=decoded.rejects)
    outcome = validator.validate_readings(
        decoded.readings, decoded.raws or None, decoded.positions or None
    )
    if decoded.rejects:
        outcome.rejects = sorted(
            [*decoded.rejects, *outcome.rejects],
            key=lambda reject: -1 if reject.index is None else reject.index,
        )
    return outcome


# ------------------------------------------------------------------------------ compact batch


class _Array(msgspec.Struct, array_like=True, frozen=True):
    dtype: str
    data: bytes

    @classmethod
    def of(cls, values: npt.NDArray[Any]) -> _Array:
        return cls(values.dtype.str, values.tobytes())

    def decode(self, expected_length: int, what: str) -> npt.NDArray[Any]:
        if self.dtype not in _ALLOWED_DTYPES:
            raise WireFormatError(f"batch body: {what} has unsupported dtype {self.dtype!r}")
        array = np.frombuffer(self.data, dtype=np.dtype(self.dtype))
        if len(array) != expected_length:
            raise WireFormatError(
                f"batch body: {what} holds {len(array)} values, expected {expected_length}"
            )
        return array


_ALLOWED_DTYPES = frozenset({"|i1", "<i2", "<i4", "<i8", "<u4", "|u1"})


class _BatchBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    producer: Annotated[str, msgspec.Meta(max_length=_MAX_PRODUCER_CHARS)]
    created_ms: int
    first_seq: int | None
    last_seq: int | None
    series: list[tuple[str, str, str, str, str]]
    counts: _Array  # readings per series (u4)
    decimals: _Array  # per series: decimal places of scaled values, -1 = raw float64 (i1)
    ts_first: _Array  # per series first timestamp (i8)
    ts_delta: _Array  # per reading delta to the previous in its series, 0 at series start
    q_first: _Array  # per scaled series first scaled value (i8)
    q_delta: _Array  # per scaled reading delta of scaled values
    raw_values: _Array  # byte-shuffled float64 of raw series (u1)


@dataclass(frozen=True)
class Batch:
    """A decoded compact batch."""

    batch_id: uuid.UUID
    columns: ReadingColumns
    producer: str
    created_ms: int
    first_seq: int | None = None
    last_seq: int | None = None


def _narrow(values: Int64Array) -> npt.NDArray[Any]:
    """The same integers in the narrowest signed dtype that holds them."""
    if len(values) == 0:
        return values.astype(np.int8)
    low, high = int(values.min()), int(values.max())
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return values.astype(dtype)
    return values


def _decimal_places(
    value: Float64Array, starts: Int64Array, counts: Int64Array
) -> npt.NDArray[np.int8]:
    """Per series, the fewest decimal places (<= 6) that represent every value bit-exactly."""
    n_series = len(starts)
    places = np.full(n_series, -1, dtype=np.int8)
    if len(value) == 0:
        return places
    bits = value.view(np.int64)
    nonempty = counts > 0
    for decimals in range(_MAX_DECIMALS + 1):
        open_series = (places < 0) & nonempty
        if not open_series.any():
            break
        scale = 10.0**decimals
        with np.errstate(invalid="ignore", over="ignore"):
            scaled = np.round(value * scale)
            representable = np.abs(scaled) < 2**53  # also False for NaN and infinities
            # Check through the integers the decoder will see (this also catches -0.0).
            integers = np.where(representable, scaled, 0).astype(np.int64)
            exact = representable & ((integers / scale).view(np.int64) == bits)
        per_series = (
            np.logical_and.reduceat(exact, starts[nonempty]) if nonempty.any() else exact[:0]
        )
        all_exact = np.zeros(n_series, dtype=bool)
        all_exact[nonempty] = per_series
        places[open_series & all_exact] = decimals
    return places


class _Codec(threading.local):
    def __init__(self) -> None:
        self.compressors: dict[int, zstandard.ZstdCompressor] = {}
        self.decompressor = zstandard.ZstdDecompressor()

    def compressor(self, level: int) -> zstandard.ZstdCompressor:
        if level not in self.compressors:
            self.compressors[level] = zstandard.ZstdCompressor(level=level)
        return self.compressors[level]


_codec = _Codec()
_body_encoder = msgspec.msgpack.Encoder()
_body_decoder = msgspec.msgpack.Decoder(_BatchBody)


def encode_batch(
    columns: ReadingColumns,
    *,
    batch_id: uuid.UUID | None = None,
    producer: str = "",
    created_ms: int = 0,
    first_seq: int | None = None,
    last_seq: int | None = None,
    level: int = 3,
) -> bytes:
    """Encode readings as a compact batch (version 1). `first_seq`/`last_seq` let a producer
    record which of its own rows the batch carries (the edge buffer acknowledges by them)."""
    batch_id = batch_id or uuid.uuid4()
    n_series = len(columns.series)
    order = np.lexsort((columns.timestamp, columns.series_index))
    series_index = columns.series_index[order]
    timestamp = columns.timestamp[order]
    value = columns.value[order]
    counts = np.bincount(series_index, minlength=n_series).astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64) if n_series else counts
    nonempty = counts > 0
    used_starts = starts[nonempty]

    ts_delta = np.diff(timestamp, prepend=timestamp[:1])
    ts_delta[used_starts] = 0
    ts_first = np.zeros(n_series, dtype=np.int64)
    ts_first[nonempty] = timestamp[used_starts]

    decimals = _decimal_places(value, starts, counts)
    scaled_mask = (decimals >= 0)[series_index] if n_series else np.zeros(0, dtype=bool)
    scale = 10.0 ** decimals.astype(np.float64)[series_index[scaled_mask]]
    quantized = np.round(value[scaled_mask] * scale).astype(np.int64)
    scaled_counts = np.where(decimals >= 0, counts, 0)
    scaled_starts = np.concatenate(([0], np.cumsum(scaled_counts)[:-1])).astype(np.int64)
    scaled_used = scaled_starts[(decimals >= 0) & nonempty]
    q_delta = np.diff(quantized, prepend=quantized[:1])
    q_delta[scaled_used] = 0
    q_first = np.zeros(n_series, dtype=np.int64)
    q_first[(decimals >= 0) & nonempty] = quantized[scaled_used]

    raw = value[~scaled_mask] if n_series else value
    shuffled = raw.view(np.uint8).reshape(-1, 8).T.copy().reshape(-1)

    body = _BatchBody(
        producer=producer,
        created_ms=created_ms,
        first_seq=first_seq,
        last_seq=last_seq,
        series=[tuple(key) for key in columns.series],  # type: ignore[misc]
        counts=_Array.of(counts.astype(np.uint32)),
        decimals=_Array.of(decimals),
        ts_first=_Array.of(ts_first),
        ts_delta=_Array.of(_narrow(ts_delta)),
        q_first=_Array.of(q_first),
        q_delta=_Array.of(_narrow(q_delta)),
        raw_values=_Array.of(shuffled),
    )
    compressed = _codec.compressor(level).compress(_body_encoder.encode(body))
    header = _HEADER.pack(
        BATCH_MAGIC,
        BATCH_VERSION,
        _FLAG_ZSTD,
        0,
        batch_id.bytes,
        len(columns),
        len(compressed),
        zlib.crc32(compressed),
    )
    return header + compressed


def is_batch(payload: bytes) -> bool:
    """Whether a payload claims to be a compact batch (JSON never starts with the magic)."""
    return payload[: len(BATCH_MAGIC)] == BATCH_MAGIC


def _decompress(body: memoryview) -> bytes:
    """One zstd frame whose size `_verified_header` already bounded."""
    try:
        return _codec.decompressor.decompress(body, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise WireFormatError(f"body: zstd decompression failed ({exc})") from exc


def decode_batch(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Batch:
    """Decode a compact batch; raise WireFormatError saying exactly what is wrong.

    Integrity first: header, size, CRC-32 and the announced decompressed size are checked
    before anything is decompressed, and every array's length before anything is allocated.
    """
    header = _verified_header(payload, limits)
    body: bytes | memoryview = memoryview(payload)[HEADER_SIZE:]
    if header.flags & _FLAG_ZSTD:
        body = _decompress(body)  # type: ignore[arg-type]
    try:
        decoded = _body_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise WireFormatError(f"body: {exc}") from exc
    try:
        columns = _columns_from_body(decoded, header.readings)
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        if isinstance(exc, WireFormatError):
            raise
        raise WireFormatError(f"body: inconsistent columns ({exc})") from exc
    return Batch(
        header.batch_id,
        columns,
        decoded.producer,
        decoded.created_ms,
        decoded.first_seq,
        decoded.last_seq,
    )


def _columns_from_body(body: _BatchBody, count: int) -> ReadingColumns:
    n_series = len(body.series)  # bounded by the decompressed size, as every array here
    counts = body.counts.decode(n_series, "counts").astype(np.int64)
    if int(counts.sum()) != count:
        raise WireFormatError(
            f"body: series counts add up to {int(counts.sum())}, the header announces {count}"
        )
    decimals = body.decimals.decode(n_series, "decimals")
    if n_series and (decimals.min() < -1 or decimals.max() > _MAX_DECIMALS):
        raise WireFormatError("body: decimals out of range")
    scaled = decimals >= 0
    scaled_counts = np.where(scaled, counts, 0)
    n_scaled = int(scaled_counts.sum())
    # Every length is checked against the body before anything of size `count` is allocated.
    ts_first = body.ts_first.decode(n_series, "ts_first")
    ts_delta = body.ts_delta.decode(count, "ts_delta")
    q_first = body.q_first.decode(n_series, "q_first")
    q_delta = body.q_delta.decode(n_scaled, "q_delta")
    raw_bytes = body.raw_values.decode((count - n_scaled) * 8, "raw_values")
    series_index = np.repeat(np.arange(n_series, dtype=np.int32), counts)
    timestamp = _undelta(ts_first, ts_delta, counts)
    quantized = _undelta(q_first, q_delta, scaled_counts)
    raw = raw_bytes.reshape(8, -1).T.copy().view(np.float64).reshape(-1)
    value = np.empty(count, dtype=np.float64)
    scaled_mask = scaled[series_index] if n_series else np.zeros(0, dtype=bool)
    value[scaled_mask] = quantized / 10.0 ** decimals.astype(np.float64)[series_index[scaled_mask]]
    value[~scaled_mask] = raw
    series = [SeriesKey(*key) for key in body.series]
    return ReadingColumns(series, series_index, timestamp, value)


def _undelta(first: Int64Array, delta: npt.NDArray[Any], counts: Int64Array) -> Int64Array:
    """Invert per-series delta encoding: first value per series, deltas within it."""
    total = np.cumsum(delta.astype(np.int64))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    nonempty = counts > 0
    offsets = np.zeros(len(counts), dtype=np.int64)
    offsets[nonempty] = first[nonempty].astype(np.int64) - total[starts[nonempty]]
    return total + np.repeat(offsets, counts)


def validate_batch(
    payload: bytes, validator: Validator, limits: Limits = DEFAULT_LIMITS
) -> tuple[Batch | None, Validated]:
    """Decode and validate a compact batch; a corrupt batch becomes one whole-payload reject."""
    try:
        batch = decode_batch(payload, limits)
    except WireFormatError as exc:
        return None, Validated(readings=[], rejects=[Reject(str(exc), _truncate(payload), None)])
    return batch, validator.validate_columns(batch.columns)


def validate_payload(
    payload: bytes, validator: Validator, limits: Limits = DEFAULT_LIMITS
) -> Validated:
    """Either wire format, told apart by the batch magic."""
    if is_batch(payload):
        return validate_batch(payload, validator, limits)[1]
    return validate_json(payload, validator, limits)
