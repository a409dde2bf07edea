"""Per-window, per-stream aggregates: the features analysts read and the model scores.

A stream's min, max and slope need two readings in the window: with one they are null (a device that sends
one averaged value per interval gives no spread), and `<stream>_count` says how many readings there were.

Two steps, both sorts and NumPy `reduceat` with no Python loop over readings or windows: readings reduce
to partial sums per (patient, window, stream), partials of later batches merge into them, and a closing
window's partials turn into its feature row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.contract import STREAMS
from pipeline.readings import epoch_ms

# Streams with a numeric vital, and the unit-carrying prefix of their feature columns.
VITALS: dict[str, str] = {
    "glucose": "glucose_mg_dl",
    "heart_rate": "heart_rate_bpm",
    "respiration": "respiration_rate_per_min",
}
STATS = ("mean", "min", "max", "last", "slope_per_min")
_STREAM_CODE = {s: i for i, s in enumerate(STREAMS)}


def window_columns() -> list[str]:
    cols = ["patient_id", "window_start", "window_end", "reading_count"]
    for stream, prefix in VITALS.items():
        cols += [f"{prefix}_{s}" for s in STATS] + [f"{stream}_count", f"{stream}_present"]
    cols += [
        "glucose_censored_count",
        "fall_count",
        "fall_confidence_max",
        "fall_impact_g_max",
        "fall_present",
    ]
    return cols


def window_schema() -> pa.Schema:
    ts = pa.timestamp("ms", tz="UTC")
    fields = []
    for c in window_columns():
        if c == "patient_id":
            t: pa.DataType = pa.string()
        elif c in ("window_start", "window_end"):
            t = ts
        elif c.endswith("_present"):
            t = pa.bool_()
        elif c.endswith("_count"):
            t = pa.int32()
        else:
            t = pa.float64()
        fields.append(pa.field(c, t))
    return pa.schema(fields)


# Per (patient, window, stream): sums from which every feature follows, so that windows aggregate
# incrementally (as Flink's AggregateFunction or Kafka Streams' aggregate do) and open windows cost one
# row per patient and stream instead of every reading. Times are minutes from the window start.
PARTIAL_SCHEMA = pa.schema(
    [
        ("patient_id", pa.string()),
        ("window", pa.int64()),  # window number: window_start = window * window_ms
        ("stream", pa.int8()),  # index into STREAMS
        ("count", pa.int64()),
        ("s_v", pa.float64()),
        ("s_t", pa.float64()),
        ("s_tv", pa.float64()),
        ("s_tt", pa.float64()),
        ("v_min", pa.float64()),
        ("v_max", pa.float64()),
        ("last_t", pa.float64()),
        ("last_v", pa.float64()),
        ("censored", pa.int64()),
        ("detected", pa.int64()),  # falls: readings with fall_detected true
        ("conf_max", pa.float64()),  # -1: none
        ("impact_max", pa.float64()),  # -1: none
    ]
)


def partials(readings: pa.Table, window_ms: int) -> pa.Table:
    """Canonical readings (READINGS_SCHEMA) -> PARTIAL_SCHEMA rows, one per (patient, window, stream)."""
    if len(readings) == 0:
        return PARTIAL_SCHEMA.empty_table()
    t_ms = epoch_ms(readings.column("event_time"))
    w = t_ms // window_ms
    value = np.nan_to_num(readings.column("value").to_numpy(zero_copy_only=False).astype(np.float64))
    return _reduce(
        readings.column("patient_id"),
        w,
        _stream_codes(readings.column("stream")),
        {
            "count": np.ones(len(w), np.int64),
            "s_v": value,
            "t": (t_ms - w * window_ms) / 60_000.0,
            "v": value,
            "censored": readings.column("censored").to_numpy(zero_copy_only=False).astype(np.int64),
            "detected": (value > 0.5).astype(np.int64),
            "conf": np.nan_to_num(
                readings.column("fall_confidence").to_numpy(zero_copy_only=False).astype(float), nan=-1.0
            ),
            "impact": np.nan_to_num(readings.column("impact_g").to_numpy(zero_copy_only=False).astype(float), nan=-1.0),
        },
        raw=True,
    )


def merge_partials(*tables: pa.Table) -> pa.Table:
    """Combine partials of the same (patient, window, stream); later tables win ties for `last`."""
    parts = [t for t in tables if len(t)]
    if len(parts) <= 1:
        return parts[0] if parts else PARTIAL_SCHEMA.empty_table()
    p = pa.concat_tables(parts)
    cols = {name: p.column(name).to_numpy() for name in PARTIAL_SCHEMA.names[3:]}
    return _reduce(p.column("patient_id"), p.column("window").to_numpy(), p.column("stream").to_numpy(), cols)


def _reduce(
    patient: pa.ChunkedArray, window: np.ndarray, stream: np.ndarray, c: dict[str, np.ndarray], raw: bool = False
) -> pa.Table:
    """Group rows by (patient, window, stream) and reduce; `raw` rows are single readings (t, v, conf,
    impact), otherwise partial rows (PARTIAL_SCHEMA columns)."""
    enc = pc.dictionary_encode(patient).combine_chunks()
    code = np.asarray(enc.indices, dtype=np.int64)
    w0 = int(window.min())
    span = int(window.max()) - w0 + 1
    key = (code * span + (window - w0)) * len(STREAMS) + stream.astype(np.int64)
    t = c["t"] if raw else c["last_t"]
    order = np.lexsort((t, key))  # stable: among equal times the later row ends up last and wins `last`
    k = key[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    ends = np.r_[starts[1:], len(k)] - 1
    if raw:
        tt, v = c["t"][order], c["v"][order]
        sums = {"s_t": tt, "s_tv": tt * v, "s_tt": tt * tt}
        v_min, v_max, last_t, last_v = v, v, tt, v
        conf, impact = c["conf"][order], c["impact"][order]
    else:
        sums = {name: c[name][order] for name in ("s_t", "s_tv", "s_tt")}
        v_min, v_max, last_t, last_v = (c[n][order] for n in ("v_min", "v_max", "last_t", "last_v"))
        conf, impact = c["conf_max"][order], c["impact_max"][order]
    first = order[starts]
    out = {
        "patient_id": enc.dictionary.take(pa.array(code[first])),
        "window": window[first].astype(np.int64),
        "stream": stream[first].astype(np.int8),
        "count": np.add.reduceat(c["count"][order], starts),
        "s_v": np.add.reduceat(c["s_v"][order], starts),
        **{name: np.add.reduceat(arr, starts) for name, arr in sums.items()},
        "v_min": np.minimum.reduceat(v_min, starts),
        "v_max": np.maximum.reduceat(v_max, starts),
        "last_t": last_t[ends],
        "last_v": last_v[ends],
        "censored": np.add.reduceat(c["censored"][order], starts),
        "detected": np.add.reduceat(c["detected"][order], starts),
        "conf_max": np.maximum.reduceat(conf, starts),
        "impact_max": np.maximum.reduceat(impact, starts),
    }
    return pa.table(out, schema=PARTIAL_SCHEMA)


def window_features(readings: pa.Table, window_ms: int) -> pa.Table:
    """Aggregate canonical readings (READINGS_SCHEMA) into one row per (patient, tumbling window)."""
    return finish(partials(readings, window_ms), window_ms)


def finish(part: pa.Table, window_ms: int) -> pa.Table:
    """PARTIAL_SCHEMA rows -> one feature row per (patient, window), ordered by patient and window."""
    if len(part) == 0:
        return window_schema().empty_table()
    enc = pc.dictionary_encode(part.column("patient_id")).combine_chunks()
    code = np.asarray(enc.indices, dtype=np.int64)
    w = part.column("window").to_numpy()
    w0 = int(w.min())
    span = int(w.max()) - w0 + 1
    windows, row = np.unique(code * span + (w - w0), return_inverse=True)
    m = len(windows)
    win_index = windows % span + w0
    col = {name: part.column(name).to_numpy() for name in PARTIAL_SCHEMA.names[3:]}
    count = col["count"]
    stream = part.column("stream").to_numpy().astype(np.int64)
    denom = count * col["s_tt"] - col["s_t"] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(
            (count >= 2) & (denom > 1e-12), (count * col["s_tv"] - col["s_t"] * col["s_v"]) / denom, np.nan
        )
        mean = col["s_v"] / count
    # One reading has no spread and no trend: min, max and slope are missing (null), not copies of the value,
    # so that a pre-aggregated stream (one averaged value per interval) does not read as a flat signal.
    single = count < 2
    v_min = np.where(single, np.nan, col["v_min"])
    v_max = np.where(single, np.nan, col["v_max"])
    out: dict[str, object] = {
        "patient_id": enc.dictionary.take(pa.array(windows // span)),
        "window_start": pa.array(win_index * window_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "window_end": pa.array((win_index + 1) * window_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "reading_count": np.bincount(row, weights=count, minlength=m).astype(np.int32),
    }
    stats = {"mean": mean, "min": v_min, "max": v_max, "last": col["last_v"], "slope_per_min": slope}
    for name, prefix in VITALS.items():
        sel = stream == _STREAM_CODE[name]
        for stat, arr in stats.items():
            values = np.full(m, np.nan)
            values[row[sel]] = arr[sel]
            out[f"{prefix}_{stat}"] = pa.array(values, pa.float64(), from_pandas=True)  # NaN -> null
        cnt = np.zeros(m, np.int32)
        cnt[row[sel]] = count[sel]
        out[f"{name}_count"] = cnt
        out[f"{name}_present"] = cnt > 0
    glucose = stream == _STREAM_CODE["glucose"]
    cens = np.zeros(m, np.int32)
    cens[row[glucose]] = col["censored"][glucose]
    out["glucose_censored_count"] = cens
    fall = stream == _STREAM_CODE["fall"]
    fall_count = np.zeros(m, np.int32)
    fall_count[row[fall]] = col["detected"][fall]
    out["fall_count"] = fall_count
    for name, arr in (("fall_confidence_max", col["conf_max"]), ("fall_impact_g_max", col["impact_max"])):
        values = np.full(m, np.nan)
        values[row[fall]] = np.where(arr[fall] < 0, np.nan, arr[fall])
        out[name] = pa.array(values, pa.float64(), from_pandas=True)
    present = np.zeros(m, bool)
    present[row[fall]] = True
    out["fall_present"] = present
    return pa.table(out, schema=window_schema())


def _stream_codes(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    enc = pc.dictionary_encode(col).combine_chunks()
    lookup = np.array([_STREAM_CODE[s] for s in enc.dictionary.to_pylist()], dtype=np.int64)
    return lookup[np.asarray(enc.indices, dtype=np.int64)]
