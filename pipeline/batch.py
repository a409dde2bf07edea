"""One poll's messages of one topic, as Arrow columns: what the Kafka edge hands to the stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa


@dataclass
class Decoded:
    """A RawBatch's messages decoded (pipeline.decode): rows that decoded (stream columns + key, event_time,
    clock_skew_s + META) and rows that did not."""

    table: pa.Table
    rejected_src: np.ndarray  # int32 positions in the RawBatch
    rejected_reason: list[str]
    rejected_detail: list[str]


@dataclass
class RawBatch:
    """Messages of one topic, as columns: keys and values are binary Arrow arrays of the original bytes
    (lists of bytes are converted)."""

    stream: str
    topic: str
    keys: pa.Array
    values: pa.Array
    partitions: np.ndarray  # int32
    offsets: np.ndarray  # int64
    timestamps_ms: np.ndarray  # int64, Kafka record timestamps
    headers: dict[int, list[tuple[str, bytes | None]]] = field(default_factory=dict)  # position -> Kafka headers
    _keys: pa.Array | None = field(default=None, repr=False)
    # The decoder's output for these messages when the consumer process has decoded them already, one batch
    # ahead on the other core (pipeline.consumer_process; `decoded_batch`); None: the engine decodes them.
    decoded: Decoded | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.keys, pa.Array):
            self.keys = pa.array(self.keys, pa.binary())
        if not isinstance(self.values, pa.Array):
            self.values = pa.array(self.values, pa.binary())

    def __len__(self) -> int:
        return len(self.values)

    def key_array(self) -> pa.Array:
        """Keys as UTF-8 strings (a key that is not UTF-8 shows replacement characters)."""
        if self._keys is None:
            self._keys = valid_utf8(self.keys.cast(pa.string(), safe=False))
        return self._keys

    def value_array(self) -> pa.Array:
        return self.values


def valid_utf8(arr: pa.Array) -> pa.Array:
    try:
        arr.validate(full=True)
        return arr
    except pa.ArrowInvalid:
        # A key that is not UTF-8 cannot equal a patient id: keep it visible as a replacement string.
        return pa.array(
            [None if k is None else k.decode("utf-8", "replace") for k in arr.cast(pa.binary()).to_pylist()]
        )


def lag_beyond(high_water: dict[str, int], offsets: dict[str, int]) -> dict[str, int]:
    """Consumer lag: {"topic:partition": messages in Kafka beyond `offsets` (the next offset to read, as the state
    checkpoint has it; 0 where it has none)} for each partition with a known high-water mark, never negative."""
    return {tp: max(0, high - offsets.get(tp, 0)) for tp, high in sorted(high_water.items())}
