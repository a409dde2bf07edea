"""Event time: late readings, duplicates, the watermark and tumbling windows.

Semantics (as in Kafka Streams' grace period and Flink's bounded lateness):
- Windows are tumbling, `window` long, aligned to the epoch: [k*w, (k+1)*w).
- Each source (a topic-partition) has a high-water mark: the largest event time it has delivered.
- The watermark is the smallest high-water mark among the sources that hold it (Flink's per-partition
  watermarks). A source with unread messages in Kafka (`lagging`, told by the consumer) always holds
  it, and while a lagging source has delivered nothing yet the watermark does not move: a backlog read
  partition by partition (a replay, a restart after an outage) must not make the slower partitions
  late. A source that is caught up is idle, and stops holding the watermark, once its high-water mark
  trails the leading source's by more than `idle_timeout` (event time, so a replay closes the same
  windows as the live run): a sensor that went quiet does not stall every patient's windows.
  The watermark never goes back.
- Windows aggregate incrementally: each batch's readings reduce to partial sums per (patient, window,
  stream) that merge into the open windows' partials (pipeline.features), so the state grows with
  patients x open windows, not with readings.
- A window closes when watermark >= window_end + allowed_lateness; its features are emitted once. A
  reading for a window that has closed is late (quarantined as `late`).
- A reading equal to one already in an open window (same patient, stream, device and event time) is a
  duplicate: open windows keep their readings' identities (8 bytes each) for this.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.features import PARTIAL_SCHEMA, finish, merge_partials, partials
from pipeline.readings import empty_table, epoch_ms


@dataclass(frozen=True)
class WindowConfig:
    window: timedelta = timedelta(minutes=5)
    allowed_lateness: timedelta = timedelta(minutes=2)
    idle_timeout: timedelta = timedelta(minutes=10)

    @property
    def window_ms(self) -> int:
        return int(self.window.total_seconds() * 1000)

    @property
    def lateness_ms(self) -> int:
        return int(self.allowed_lateness.total_seconds() * 1000)

    @property
    def idle_ms(self) -> int:
        return int(self.idle_timeout.total_seconds() * 1000)


@dataclass
class WindowState:
    """What a run carries from batch to batch (and the state checkpoint from run to run)."""

    # Open windows, aggregated incrementally: one PARTIAL_SCHEMA row per (patient, window, stream).
    open: pa.Table = field(default_factory=lambda: empty_table(PARTIAL_SCHEMA))
    source_high_ms: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> max event time
    watermark_ms: int | None = None
    dedupe: DedupeIndex | None = field(default=None, repr=False)  # identities of the open windows' readings

    @property
    def open_readings(self) -> int:
        """Readings counted in windows that have not closed yet."""
        return int(pc.sum(self.open.column("count")).as_py() or 0)


class DedupeIndex:
    """The open windows' readings' identities, as sorted integer keys per window.

    A duplicate has the same event time, hence the same window, as its original, so each window keeps its
    own sorted array: key = series code x window length + offset in the window, where a series is
    (patient, stream, device) and codes come from a dictionary of the series seen so far. A batch costs
    string work on its own rows only and a binary search per row; closing a window drops its array. It is
    part of the state checkpoint (`to_tables` / `from_tables`).
    """

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.series: pa.Array = pa.nulls(0, pa.string())  # not pa.array([]): see readings.empty_table
        self.by_window: dict[int, np.ndarray] = {}

    def keys(self, readings: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(window start, key) per row."""
        ident = pc.binary_join_element_wise(
            readings.column("patient_id"), readings.column("stream"), readings.column("device_id"), "\x1f"
        )
        code = pc.index_in(ident, value_set=self.series)
        if code.null_count:
            fresh = pc.unique(ident.filter(pc.is_null(code)).combine_chunks())
            self.series = pa.concat_arrays([self.series, fresh.cast(pa.string())])
            code = pc.index_in(ident, value_set=self.series)
        t = epoch_ms(readings.column("event_time"))
        start = t // self.window_ms * self.window_ms
        codes = np.asarray(code.to_numpy(zero_copy_only=False), dtype=np.int64)
        return start, codes * self.window_ms + (t - start)

    def duplicates(self, start: np.ndarray, key: np.ndarray) -> np.ndarray:
        """Rows whose identity is already indexed or appears earlier in this batch (the first copy wins)."""
        dup = np.zeros(len(key), dtype=bool)
        if len(key) == 0:
            return dup
        order = np.lexsort((np.arange(len(key)), key, start))
        same = (start[order][1:] == start[order][:-1]) & (key[order][1:] == key[order][:-1])
        dup[order[1:][same]] = True
        for w in np.unique(start).tolist():
            known = self.by_window.get(w)
            if known is None or len(known) == 0:
                continue
            rows = np.flatnonzero(start == w)
            pos = np.minimum(np.searchsorted(known, key[rows]), len(known) - 1)
            dup[rows[known[pos] == key[rows]]] = True
        return dup

    def add(self, start: np.ndarray, key: np.ndarray) -> None:
        for w in np.unique(start).tolist():
            new = key[start == w]
            old = self.by_window.get(w)
            merged = new if old is None else np.concatenate([old, new])
            merged.sort(kind="stable")  # two sorted runs: linear
            self.by_window[w] = merged

    def to_tables(self) -> dict[str, pa.Table]:
        """The index as tables: the series dictionary, each window's start and key count, and the keys, one
        chunk per window (NumPy's own buffers, no copy: the keys are most of a checkpoint's bytes)."""
        windows = list(self.by_window)
        runs = [pa.record_batch([pa.array(self.by_window[w])], names=["key"]) for w in windows]
        return {
            "dedupe_series": pa.table({"series": self.series}),
            "dedupe_windows": pa.table(
                {
                    "window_start": pa.array(windows, pa.int64()),
                    "count": pa.array([len(self.by_window[w]) for w in windows], pa.int64()),
                }
            ),
            "dedupe_runs": pa.Table.from_batches(runs, schema=pa.schema([("key", pa.int64())])),
        }

    @classmethod
    def from_tables(cls, window_ms: int, tables: dict[str, pa.Table]) -> DedupeIndex:
        index = cls(window_ms)
        if "dedupe_series" in tables:
            index.series = tables["dedupe_series"].column("series").combine_chunks().cast(pa.string())
        if "dedupe_windows" in tables and len(tables["dedupe_windows"]):
            starts = tables["dedupe_windows"].column("window_start").to_numpy()
            counts = tables["dedupe_windows"].column("count").to_numpy()
            key = np.asarray(tables["dedupe_runs"].column("key").to_numpy(), dtype=np.int64)
            bounds = np.concatenate([[0], np.cumsum(counts)])
            for w, lo, hi in zip(starts.tolist(), bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                index.by_window[w] = key[lo:hi].copy()  # sorted when saved
        elif "dedupe_keys" in tables and len(tables["dedupe_keys"]):  # checkpoints before 2026-11-26
            start = tables["dedupe_keys"].column("window_start").to_numpy()
            key = tables["dedupe_keys"].column("key").to_numpy()
            for w in np.unique(start).tolist():
                index.by_window[w] = np.sort(key[start == w])
        return index

    def drop_closed(self, watermark_ms: int | None, lateness_ms: int, drain: bool) -> None:
        for w in list(self.by_window):
            if drain or (watermark_ms is not None and w + self.window_ms + lateness_ms <= watermark_ms):
                del self.by_window[w]


@dataclass
class Step:
    """What one micro-batch did. Masks are over the input readings."""

    late: np.ndarray
    duplicate: np.ndarray
    windows: pa.Table  # features of the windows closed by this step
    windowed_readings: int  # readings inside those windows


def step(
    state: WindowState,
    readings: pa.Table,
    cfg: WindowConfig,
    drain: bool = False,
    lagging: Collection[str] = (),
) -> Step:
    """Advance `state` by one micro-batch of canonical readings (READINGS_SCHEMA + `source`).

    `lagging`: sources ("topic:partition") that still have unread messages after this batch."""
    t_ms = epoch_ms(readings.column("event_time"))
    late = late_mask(t_ms, state.watermark_ms, cfg)
    if state.dedupe is None:
        state.dedupe = DedupeIndex(cfg.window_ms)
    start, key = state.dedupe.keys(readings)
    duplicate = np.zeros(len(readings), dtype=bool)
    candidates = np.flatnonzero(~late)
    duplicate[candidates] = state.dedupe.duplicates(start[candidates], key[candidates])
    accepted_idx = np.flatnonzero(~late & ~duplicate)
    state.dedupe.add(start[accepted_idx], key[accepted_idx])
    accepted = readings.take(pa.array(accepted_idx))
    _advance_sources(state, accepted.column("source"), t_ms[accepted_idx])
    state.open = merge_partials(state.open, partials(accepted, cfg.window_ms))
    state.watermark_ms = watermark(state, cfg, lagging)
    windows, n_windowed = close_windows(state, cfg, drain)
    state.dedupe.drop_closed(state.watermark_ms, cfg.lateness_ms, drain)
    return Step(late=late, duplicate=duplicate, windows=windows, windowed_readings=n_windowed)


def late_mask(t_ms: np.ndarray, watermark_ms: int | None, cfg: WindowConfig) -> np.ndarray:
    if watermark_ms is None:
        return np.zeros(len(t_ms), dtype=bool)
    window_end = (t_ms // cfg.window_ms + 1) * cfg.window_ms
    return np.asarray(window_end + cfg.lateness_ms <= watermark_ms)


def _advance_sources(state: WindowState, source: pa.ChunkedArray, t_ms: np.ndarray) -> None:
    if len(t_ms) == 0:
        return
    enc = pc.dictionary_encode(source).combine_chunks()
    codes = np.asarray(enc.indices, dtype=np.int64)
    highs = np.full(len(enc.dictionary), np.iinfo(np.int64).min)
    np.maximum.at(highs, codes, t_ms)
    for name, high in zip(enc.dictionary.to_pylist(), highs.tolist(), strict=True):
        state.source_high_ms[name] = max(high, state.source_high_ms.get(name, high))


def watermark(state: WindowState, cfg: WindowConfig, lagging: Collection[str] = ()) -> int | None:
    if not state.source_high_ms or any(s not in state.source_high_ms for s in lagging):
        return state.watermark_ms
    names = list(state.source_high_ms)
    highs = np.array([state.source_high_ms[s] for s in names], dtype=np.int64)
    behind = np.array([s in lagging for s in names], dtype=bool)
    holding = behind | (highs >= highs.max() - cfg.idle_ms)
    candidate = int(highs[holding].min())
    return candidate if state.watermark_ms is None else max(candidate, state.watermark_ms)


def close_windows(state: WindowState, cfg: WindowConfig, drain: bool = False) -> tuple[pa.Table, int]:
    """Emit features of every open window the watermark has passed (all of them when draining)."""
    part = state.open
    if len(part) == 0 or (state.watermark_ms is None and not drain):
        return finish(PARTIAL_SCHEMA.empty_table(), cfg.window_ms), 0
    end_ms = (part.column("window").to_numpy() + 1) * cfg.window_ms
    closing = np.ones(len(part), dtype=bool) if drain else end_ms + cfg.lateness_ms <= state.watermark_ms
    if not closing.any():
        return finish(PARTIAL_SCHEMA.empty_table(), cfg.window_ms), 0
    closed = part.filter(pa.array(closing))
    state.open = part.filter(pa.array(~closing))
    return finish(closed, cfg.window_ms), int(pc.sum(closed.column("count")).as_py())
