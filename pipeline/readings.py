"""Canonical readings: every stream's decoded, validated messages in one schema, the windows' input.

One row per reading: patient, device, stream, event time, a float `value` (glucose mg/dL, heart rate bpm,
respiration rate per min, 1.0/0.0 for a fall detected or not), fall detector details, and `censored` for a
CGM value at its reporting bound. Provenance (`source` "topic:partition", `src` position in the RawBatch)
travels beside them through the window step.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.contract import StreamContract

READINGS_SCHEMA = pa.schema(
    [
        ("patient_id", pa.string()),
        ("device_id", pa.string()),
        ("stream", pa.string()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        ("value", pa.float64()),
        ("fall_confidence", pa.float64()),
        ("impact_g", pa.float64()),
        ("censored", pa.bool_()),
    ]
)
# What the window step reads: the readings plus their provenance.
PROVENANCE_SCHEMA = READINGS_SCHEMA.append(pa.field("source", pa.string())).append(pa.field("src", pa.int32()))


def to_readings(table: pa.Table, contract: StreamContract) -> pa.Table:
    """Validated stream rows to the canonical reading schema (plus provenance), flagging censored values.

    A CGM reports only its range (e.g. 40-400 mg/dL): a reading at or beyond a bound is censored, kept at
    the bound and flagged, because "below 40" is clinically meaningful, not an error.
    """
    n = len(table)
    null_f = pa.nulls(n, pa.float64())
    if contract.stream == "fall":
        value = pc.if_else(table.column("fall_detected"), 1.0, 0.0).cast(pa.float64())
        conf, impact = table.column("confidence"), table.column("impact_g")
    else:
        value = table.column(contract.value_field).cast(pa.float64())
        conf, impact = null_f, null_f
    censored = pa.array(np.zeros(n, dtype=bool))
    if contract.reporting_range is not None:
        lo, hi = contract.reporting_range
        censored = pc.or_(pc.less_equal(value, lo), pc.greater_equal(value, hi))
        value = pc.min_element_wise(pc.max_element_wise(value, lo), hi)
    return pa.table(
        {
            "patient_id": table.column("patient_id"),
            "device_id": table.column("device_id"),
            "stream": pa.repeat(pa.scalar(contract.stream, pa.string()), n),
            "event_time": table.column("event_time"),
            "value": value,
            "fall_confidence": conf,
            "impact_g": impact,
            "censored": censored,
            "source": pc.binary_join_element_wise(
                table.column("topic"), pc.cast(table.column("partition"), pa.string()), ":"
            ),
            "src": table.column("src"),
        }
    )


def epoch_ms(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A timestamp column as int64 milliseconds since the epoch."""
    return np.asarray(col.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def shared_codes(*columns: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """Integer codes of several id columns (patient ids of two tables, say), one code per distinct id across
    all of them: the same id gets the same code in each. One array per column, int64."""
    chunks = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
    ids = pa.concat_arrays([c.cast(pa.string()) for c in chunks])
    codes = np.asarray(pc.dictionary_encode(ids).indices, dtype=np.int64)
    return np.split(codes, np.cumsum([len(c) for c in chunks])[:-1])


def span_days(ids: pa.ChunkedArray | pa.Array, t_ms: np.ndarray, pad_ms: int = 0) -> float:
    """Days that each id's times span (first to last, plus `pad_ms`: a window's length, say), summed over
    the ids: patient-days of a record."""
    if len(t_ms) == 0:
        return 0.0
    (code,) = shared_codes(ids)
    lo = np.full(code.max() + 1, np.iinfo(np.int64).max)
    hi = np.full(code.max() + 1, np.iinfo(np.int64).min)
    np.minimum.at(lo, code, t_ms)
    np.maximum.at(hi, code, t_ms)
    return float(((hi - lo + pad_ms) / 86_400_000).sum())


def empty_table(schema: pa.Schema) -> pa.Table:
    """`schema.empty_table()` without loading pandas: pyarrow imports it (0.25 s of CPU) the first time it
    converts Python objects, empty ones included, and a run that finds nothing needs no pandas otherwise."""
    return pa.Table.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)
