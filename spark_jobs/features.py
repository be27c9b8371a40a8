"""Silver's per-series features with numpy, run inside `mapInArrow` (`transforms.rolling_features`).

The SQL window frames these replace (`Window.partitionBy(machine_id, metric)`, the last N rows,
a `RANGE` frame over the last hour, `lag`s for the baseline and de-duplication) cost most of a
full silver run on Sail: each frame is a separate operator over the sorted rows and the `RANGE`
frame compares its bounds row by row (the last hour's mean and maximum cost more than the seeds'
whole window). Here each partition (every series whole in one partition: the transform
repartitions by series) is sorted once with numpy on integer codes, and every feature is a
vectorized pass:

* **order**: (`machine_id`, `metric`) then `timestamp`, `sensor_id`, and the tie-breaks
  `ingest_seq`, `batch_id`, `position`, `item` where present, as the SQL windows order them
  (strings by their UTF-8 bytes, nulls first);
* **copies** (`dedupe`): a row with the same `sensor_id` and `timestamp` as the row before it in
  that order is dropped (the first ingested copy stays);
* **the last N readings** (`ROWS BETWEEN N-1 PRECEDING AND CURRENT ROW`): count, mean and sample
  deviation from cumulative sums within blocks of N rows, each block centred on its own first
  value (a window spans at most two blocks); sums never run over more than N values, so
  constant readings give a deviation of exactly 0 however long the series;
* **the last hour** (`RANGE BETWEEN W PRECEDING AND CURRENT ROW`: every reading of the series
  with a timestamp in [t - W, t], later readings at the same timestamp included): its bounds by
  binary search, the mean from cumulative sums of the values centred on the series' mean in
  extended precision, the maximum from a sparse table (levels of pairwise maxima, two lookups
  per row);
* **baseline**: the previous row's count, mean and deviation (`lag(1)`), the z-score and the
  anomaly flag.

Nulls in `value` are left out of every statistic as SQL's aggregates leave them out (a window
with no value gives null); the values are otherwise finite (`quality_check` rejects NaN and
infinities). Results agree with the SQL frames to rounding (`tests/spark/test_features.py`
compares them on random series with gaps, copies, peers and rows in any order).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

STD_FLOOR = 1e-6  # below any real deviation of readings at the catalog's resolutions
SERIES = ("machine_id", "metric")
ORDER = ("timestamp", "sensor_id")
TIE_BREAKS = ("ingest_seq", "batch_id", "position", "item")
FEATURES = (
    ("rolling_count", "int"),
    ("rolling_mean", "double"),
    ("rolling_std", "double"),
    ("window_mean", "double"),
    ("window_max", "double"),
    ("zscore", "double"),
    ("is_anomaly", "boolean"),
)


def sort_codes(column: Any) -> np.ndarray:
    """Integer codes of an Arrow column that sort as SQL sorts it ascending: strings by their
    UTF-8 bytes, numbers by value, nulls first (code -1 for strings, the minimum for numbers)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_integer(kind):
        filled = pc.fill_null(pc.cast(column, pa.int64()), np.iinfo(np.int64).min)
        return np.asarray(filled.to_numpy(), np.int64)
    encoded = pc.dictionary_encode(column)
    chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
    if not chunks:
        return np.empty(0, np.int64)
    dictionary = chunks[0].dictionary
    rank = np.empty(len(dictionary), np.int64)
    rank[np.asarray(pc.sort_indices(dictionary))] = np.arange(len(dictionary))
    indices = np.concatenate(
        [np.asarray(chunk.indices.fill_null(-1).to_numpy(), np.int64) for chunk in chunks]
    )
    codes = np.full(len(indices), -1, np.int64)
    present = indices >= 0
    codes[present] = rank[indices[present]]
    return codes


def compute(
    series: np.ndarray,
    ts: np.ndarray,
    value: np.ndarray,
    valid: np.ndarray,
    *,
    last_n: int,
    time_window_ms: int,
    sigma: float,
    min_periods: int,
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """The features of sorted rows (`series` codes, then `ts`, ascending): each as (values,
    null mask or None). `valid` marks non-null values (`value` is ignored elsewhere)."""
    n = len(ts)
    index = np.arange(n)
    first = np.ones(n, bool)
    first[1:] = series[1:] != series[:-1]
    start_of_series = np.maximum.accumulate(np.where(first, index, 0))
    position = index - start_of_series
    count = np.minimum(position + 1, last_n).astype(np.int32)
    mean, std, std_null = _last_rows(position, value, valid, last_n)
    window_mean, window_max, window_null = _last_time(first, ts, value, valid, time_window_ms)
    # the baseline: the previous row's statistics (lag 1 in the series)
    has_previous = ~first
    prev_count = np.zeros(n, np.int64)
    prev_count[1:] = count[:-1]
    prev_count[first] = 0
    prev_mean = np.empty(n)
    prev_mean[0] = np.nan
    prev_mean[1:] = mean[:-1]
    prev_std = np.zeros(n)
    prev_std[1:] = np.where(std_null[:-1], 0.0, std[:-1])
    usable = has_previous & (prev_std > 0) & valid
    with np.errstate(divide="ignore", invalid="ignore"):
        zscore = np.where(usable, (value - prev_mean) / np.where(usable, prev_std, 1.0), 0.0)
    anomaly = usable & (prev_count >= min_periods) & (np.abs(zscore) > sigma)
    mean_null = np.isnan(mean)
    return {
        "rolling_count": (count, None),
        "rolling_mean": (np.where(mean_null, 0.0, mean), mean_null),
        "rolling_std": (np.where(std_null, 0.0, std), std_null),
        "window_mean": (np.where(window_null, 0.0, window_mean), window_null),
        "window_max": (np.where(window_null, 0.0, window_max), window_null),
        "zscore": (zscore, ~usable),
        "is_anomaly": (anomaly, None),
    }


def _last_rows(
    position: np.ndarray, value: np.ndarray, valid: np.ndarray, last_n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and sample deviation over the last `last_n` rows of each series (this one included):
    (mean, NaN without values; deviation; its null mask, fewer than 2 values).

    Rows fall into blocks of `last_n` from each series' start; cumulative sums of the values'
    deviations from their block's mean run within a block only (a grid of blocks x `last_n`),
    and a window is the head of its row's block plus the tail of the block before."""
    n = len(position)
    col = position % last_n
    opens = col == 0
    block = np.cumsum(opens) - 1
    starts = np.flatnonzero(opens)
    blocks = len(starts)
    flat = block * last_n + col  # the row's cell in the grid
    values = np.where(valid, value, 0.0)
    counted = np.add.reduceat(valid.astype(np.float64), starts) if n else np.empty(0)
    centre = np.add.reduceat(values, starts) / np.maximum(counted, 1.0) if n else np.empty(0)
    deviation = np.where(valid, value - centre[block], 0.0)

    def running(cells: np.ndarray) -> np.ndarray:
        grid = np.zeros(blocks * last_n)
        grid[flat] = cells
        return np.cumsum(grid.reshape(blocks, last_n), axis=1).ravel()

    sum1, sum2 = running(deviation), running(deviation * deviation)
    s1, s2 = sum1[flat], sum2[flat]
    if valid.all():
        k = (col + 1).astype(np.float64)  # the head: this block's rows up to this one
        counts = None
    else:
        counts = running(valid.astype(np.float64))
        k = counts[flat]
    # a full window that does not start at a block's first row: the previous block's tail too
    tail = (position >= last_n) & (col != last_n - 1)
    end = np.where(tail, flat - col - 1, 0)  # the previous block's last cell
    before = np.where(tail, flat - last_n, 0)  # the previous block's cell in this row's column
    a1 = np.where(tail, sum1[end] - sum1[before], 0.0)
    a2 = np.where(tail, sum2[end] - sum2[before], 0.0)
    if counts is None:
        ak = np.where(tail, last_n - 1 - col, 0).astype(np.float64)
    else:
        ak = np.where(tail, counts[end] - counts[before], 0.0)
    shift = np.where(tail, centre[np.maximum(block - 1, 0)] - centre[block], 0.0)
    s2 = s2 + a2 + 2.0 * shift * a1 + ak * shift * shift
    s1 = s1 + a1 + ak * shift
    k = k + ak
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = centre[block] + s1 / k
        spread = s2 - s1 * s1 / k
        variance = spread / (k - 1.0)
    # Where the deviation is small against the values' distance from their block's mean (a
    # constant run, above all), the difference of sums keeps too few digits: those windows are
    # summed again directly, in two passes (mean, then squared deviations), as Spark's frames do.
    redo = np.flatnonzero((k >= 2) & (spread <= 1e-4 * s2))
    if len(redo):
        mean[redo], variance[redo] = _two_pass(redo, position, value, valid, last_n)
    std = np.sqrt(np.maximum(variance, 0.0))
    std_null = k < 2
    std = np.where(std_null | (std < STD_FLOOR), 0.0, std)
    mean = np.where(k > 0, mean, np.nan)
    return mean, std, std_null


def _two_pass(
    rows: np.ndarray, position: np.ndarray, value: np.ndarray, valid: np.ndarray, last_n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample variance of the last `last_n` rows' values of `rows`, summed directly."""
    means, variances = np.empty(len(rows)), np.empty(len(rows))
    back = np.arange(last_n)
    step = max(1, 2_000_000 // last_n)
    for begin in range(0, len(rows), step):
        chunk = rows[begin : begin + step]
        cells = chunk[:, None] - back[None, :]
        inside = back[None, :] <= position[chunk][:, None]
        cells = np.where(inside, cells, chunk[:, None])
        used = inside & valid[cells]
        values = np.where(used, value[cells], 0.0)
        count = used.sum(axis=1)
        mean = values.sum(axis=1) / count
        deviation = np.where(used, values - mean[:, None], 0.0)
        means[begin : begin + step] = mean
        variances[begin : begin + step] = (deviation * deviation).sum(axis=1) / (count - 1)
    return means, variances


def _last_time(
    first: np.ndarray, ts: np.ndarray, value: np.ndarray, valid: np.ndarray, window_ms: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and maximum over each row's series readings with timestamps in [t - window_ms, t]
    (peers included): (mean, max, null mask where the frame holds no value)."""
    n = len(ts)
    series_id = np.cumsum(first) - 1
    low, high = _range_bounds(series_id, ts, window_ms)
    # the mean: cumulative sums of values centred on their series' mean, in extended precision
    starts = np.flatnonzero(first)
    values = np.where(valid, value, 0.0)
    per_series = np.add.reduceat(values, starts) if n else np.empty(0)
    counted = np.add.reduceat(valid.astype(np.int64), starts) if n else np.empty(0, np.int64)
    centre = np.where(counted > 0, per_series / np.maximum(counted, 1), 0.0)[series_id]
    centred = np.where(valid, value - centre, 0.0).astype(np.longdouble)
    sums = np.concatenate([np.zeros(1, np.longdouble), np.cumsum(centred)])
    seen = np.concatenate([np.zeros(1, np.int64), np.cumsum(valid, dtype=np.int64)])
    k = seen[high] - seen[low]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = centre + ((sums[high] - sums[low]) / np.maximum(k, 1)).astype(np.float64)
    # the maximum: a sparse table, level j holding the maximum of 2**j rows from each row
    length = high - low
    level = np.frexp(length.astype(np.float64))[1] - 1  # floor(log2(length)), exact
    top = np.full(n, -np.inf)
    table = np.where(valid, value, -np.inf)
    levels = int(level.max()) + 1 if n else 0
    for j in range(levels):
        rows = np.flatnonzero(level == j)
        if len(rows):
            top[rows] = np.maximum(table[low[rows]], table[high[rows] - (1 << j)])
        if j + 1 < levels:
            table = np.maximum(table[: len(table) - (1 << j)], table[1 << j :])
    return mean, top, k == 0


def _range_bounds(
    series_id: np.ndarray, ts: np.ndarray, window_ms: int
) -> tuple[np.ndarray, np.ndarray]:
    """[low, high) row bounds of each row's frame: its series' rows with timestamps in
    [t - window_ms, t], found by binary search on (series, timestamp) as one integer key."""
    n = len(ts)
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    offset = ts - int(ts.min())
    span = int(offset.max()) + window_ms + 1
    # high: the end of the row's run of equal timestamps (peers) in its series
    opens = np.ones(n, bool)
    opens[1:] = (series_id[1:] != series_id[:-1]) | (ts[1:] != ts[:-1])
    high = np.append(np.flatnonzero(opens)[1:], n)[np.cumsum(opens) - 1]
    if (int(series_id[-1]) + 1) * span < 2**62:
        key = series_id * np.int64(span) + offset
        return np.searchsorted(key, key - window_ms, "left"), high
    low = np.empty(n, np.int64)  # timestamps too far apart for one key: series by series
    edges = np.flatnonzero(np.diff(series_id)) + 1
    for begin, end in zip(np.r_[0, edges], np.r_[edges, n], strict=True):
        part = ts[begin:end]
        low[begin:end] = begin + np.searchsorted(part, part - window_ms, "left")
    return low, high


def sorted_rows(table: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(series codes, timestamps, the permutation into series order, and in that order the
    copies: rows with the same series, timestamp and sensor as the row before).

    Rows sort by series and timestamp as one integer key; only rows that tie on it (peers and
    copies, few) are ordered further by sensor and the tie-breaks, from their own codes."""
    import pyarrow as pa

    n = table.num_rows
    series = np.zeros(n, np.int64)
    for name in SERIES:
        codes = sort_codes(table.column(name))
        series = series * (int(codes.max()) + 2) + codes + 1
    ts_column = table.column("timestamp")
    if ts_column.null_count:
        raise ValueError("readings without a timestamp have no place in a series")
    ts = np.asarray(ts_column.to_numpy(), np.int64)
    offset = ts - int(ts.min())
    span = int(offset.max()) + 1
    if (int(series.max()) + 1) * span < 2**63:
        # Grouped by series first (a radix sort where the codes fit 16 bits), then the stable
        # sort by the whole key finds each series' rows in long ascending runs (the payloads'
        # own order) and merges them: the same order as one stable sort by the key, in about
        # 60% of its time even from rows in random order.
        small = np.int16 if int(series.max()) < 2**15 else np.int64
        grouped = np.argsort(series.astype(small), kind="stable")
        key = (series * np.int64(span) + offset)[grouped]
        order = grouped[np.argsort(key, kind="stable")]
    else:
        order = np.lexsort((ts, series))
    in_series, at = series[order], ts[order]
    tie = (in_series[1:] == in_series[:-1]) & (at[1:] == at[:-1])
    copy = np.zeros(n, bool)
    if tie.any():
        tied = np.zeros(n, bool)
        tied[1:] |= tie
        tied[:-1] |= tie
        places = np.flatnonzero(tied)
        rows = order[places]
        run = np.cumsum(np.r_[True, ~tie])[places]  # the tie's number, ascending
        part = table.take(pa.array(rows))
        sensor = sort_codes(part.column("sensor_id"))
        keys = [sort_codes(part.column(name)) for name in TIE_BREAKS if name in part.column_names]
        within = np.lexsort((*reversed(keys), sensor, run))
        order[places] = rows[within]
        run, sensor = run[within], sensor[within]
        # a null sensor is nobody's copy (SQL's comparison of nulls is not true)
        same = (run[1:] == run[:-1]) & (sensor[1:] == sensor[:-1]) & (sensor[1:] >= 0)
        copy[places[1:]] = same
    return series, ts, order, copy


def features_arrow(
    batches: Iterator[Any],
    *,
    last_n: int,
    time_window_ms: int,
    sigma: float,
    min_periods: int,
    dedupe: bool,
    unflagged: frozenset[str] = frozenset(),
) -> Iterator[Any]:
    """`mapInArrow` body: one partition's rows (every series whole in it) with the features
    appended (`FEATURES`), copies dropped when `dedupe`; rows of an `unflagged` metric never
    get `is_anomaly`. Rows keep their partition order, so no input column is copied."""
    import pyarrow as pa

    parts = list(batches)
    if not parts:
        return
    table = pa.Table.from_batches(parts)
    series, ts, order, copy = sorted_rows(table)
    if dedupe and copy.any():
        keep = np.ones(table.num_rows, bool)
        keep[order[copy]] = False
        position = np.cumsum(keep) - 1
        order = position[order[~copy]]
        table = table.filter(pa.array(keep))
        series, ts = series[keep], ts[keep]
    value_column = table.column("value")
    valid = ~np.asarray(value_column.is_null().to_numpy(), bool)
    value = np.asarray(value_column.fill_null(0.0).to_numpy(), np.float64)
    computed = compute(
        series[order],
        ts[order],
        value[order],
        valid[order],
        last_n=last_n,
        time_window_ms=time_window_ms,
        sigma=sigma,
        min_periods=min_periods,
    )
    if unflagged:
        import pyarrow.compute as pc

        metric = table.column("metric").cast(pa.string())
        skip = np.asarray(pc.is_in(metric, pa.array(sorted(unflagged))).to_numpy(False), bool)
        if skip.any():
            flags, nulls = computed["is_anomaly"]
            computed["is_anomaly"] = (flags & ~skip[order], nulls)
    arrow_types = {"int": pa.int32(), "double": pa.float64(), "boolean": pa.bool_()}
    for name, kind in FEATURES:
        values, nulls = computed[name]
        placed = np.empty_like(values)
        placed[order] = values
        mask = None
        if nulls is not None:
            mask = np.empty(len(nulls), bool)
            mask[order] = nulls
        table = table.append_column(name, pa.array(placed, arrow_types[kind], mask=mask))
    yield from table.to_batches()


def dedupe_arrow(batches: Iterator[Any]) -> Iterator[Any]:
    """`mapInArrow` body: one partition's rows (every series whole in it) without the copies
    (the same sensor and timestamp as the row before in the series order, `sorted_rows`)."""
    import pyarrow as pa

    parts = list(batches)
    if not parts:
        return
    table = pa.Table.from_batches(parts)
    _, _, order, copy = sorted_rows(table)
    if copy.any():
        keep = np.ones(table.num_rows, bool)
        keep[order[copy]] = False
        table = table.filter(pa.array(keep))
    yield from table.to_batches()
