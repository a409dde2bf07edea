"""The quarantine: every message the stages rejected, with its reason, as one table.

The lake keeps QUARANTINE_SCHEMA (Parquet, `quarantine/`); the dead-letter topic gets the same rows plus the
original Kafka headers (DEAD_LETTER_SCHEMA). Reasons come from the decoder (`invalid_json`, `not_finite`, ...),
the expectation suites (`<stream>_out_of_range`, ...) and the window step (`late`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from pipeline.batch import RawBatch

QUARANTINE_SCHEMA = pa.schema(
    [
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("stream", pa.string()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("kafka_timestamp", pa.timestamp("ms", tz="UTC")),
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("patient_id", pa.string()),
        ("quarantined_at", pa.timestamp("ms", tz="UTC")),
    ]
)
HEADERS_TYPE = pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))
# The quarantine as it goes to the dead-letter topic: the lake's columns plus the original Kafka headers.
DEAD_LETTER_SCHEMA = QUARANTINE_SCHEMA.append(pa.field("headers", HEADERS_TYPE))


def quarantine_rows(batch: RawBatch, src: np.ndarray, reason: list[str] | str, detail: list[str] | str) -> pa.Table:
    """Rows of DEAD_LETTER_SCHEMA for the messages at positions `src` of `batch`, with one reason (and
    detail) for all or one per message."""
    n = len(src)
    src_arr = pa.array(np.asarray(src, dtype=np.int64))
    keys = batch.keys.take(src_arr)
    patient = batch.key_array().take(src_arr)
    now = datetime.now(UTC).replace(microsecond=0)
    src_list = np.asarray(src, dtype=np.int64).tolist() if batch.headers else []
    return pa.table(
        {
            "reason": pa.array([reason] * n if isinstance(reason, str) else reason, pa.string()),
            "detail": pa.array([detail] * n if isinstance(detail, str) else detail, pa.string()),
            "stream": pa.array([batch.stream] * n, pa.string()),
            "topic": pa.array([batch.topic] * n, pa.string()),
            "partition": pa.array(batch.partitions[src], pa.int32()),
            "offset": pa.array(batch.offsets[src], pa.int64()),
            "kafka_timestamp": pa.array(batch.timestamps_ms[src], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "key": keys,
            "value": batch.value_array().take(src_arr),
            "patient_id": patient,
            "quarantined_at": pa.array([now] * n, pa.timestamp("ms", tz="UTC")),
            "headers": pa.array(
                [[{"key": k, "value": v} for k, v in batch.headers.get(i, ())] for i in src_list], HEADERS_TYPE
            )
            if batch.headers
            else pa.nulls(n, HEADERS_TYPE),
        },
        schema=DEAD_LETTER_SCHEMA,
    )
