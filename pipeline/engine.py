"""One micro-batch through every stage, as plain functions over Arrow tables; no Kafka, no Prefect.

    RawBatch per topic -> decode -> route (suites) -> canonical readings -> window.step -> features
    -> score -> (risk_scores, windows, quarantine) tables + counts

`Engine` holds the event-time state between batches and checkpoints it into the lake with the outputs,
so a restart resumes where the last successful batch ended. Order per batch: write Parquet, write the
state checkpoint (with the next offsets), and only then may the caller commit offsets to Kafka.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import sink
from pipeline.contract import STREAMS, readings_suite_name, stream_contract
from pipeline.decode import RawBatch, decode, to_readings
from pipeline.features import PARTIAL_SCHEMA, READINGS_SCHEMA
from pipeline.privacy import pseudonymise_columns
from pipeline.quality import write_sample
from pipeline.score import HISTORY_SCHEMA, Scorer
from pipeline.validate import route
from pipeline.window import DedupeIndex, WindowConfig, WindowState, step

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


_ID_COLUMNS = ("patient_id", "key", "device_id")  # device ids often embed the patient id (e.g. "cgm-P000042")


@dataclass
class Totals:
    consumed: int = 0
    windowed: int = 0
    duplicates: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    windows: int = 0
    scored: int = 0

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    def add(self, other: Totals) -> None:
        self.consumed += other.consumed
        self.windowed += other.windowed
        self.duplicates += other.duplicates
        self.quarantined.update(other.quarantined)
        self.windows += other.windows
        self.scored += other.scored

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "windowed": self.windowed,
            "duplicates": self.duplicates,
            "quarantined": dict(self.quarantined),
            "windows": self.windows,
            "scored": self.scored,
        }


@dataclass
class BatchOutput:
    batch_id: str  # "<group>-<seq>": names this batch's Parquet files
    seq: int
    risk_scores: pa.Table
    windows: pa.Table
    quarantine: pa.Table  # as written to the lake (pseudonymised when that is on)
    dead_letters: pa.Table  # the same messages with their original bytes and headers, for the dead-letter topic
    counts: Totals
    pending_before: int
    pending_after: int


@dataclass
class EngineConfig:
    lake: Path
    group: str
    window: WindowConfig = field(default_factory=WindowConfig)
    quality_sample_rows: int = 20_000  # rows per suite and run that Great Expectations itself validates
    pseudonym_key: bytes | None = None  # set: patient and device ids are pseudonymised in everything written


def use_jemalloc() -> None:
    """Arrow's jemalloc pool, unless ARROW_DEFAULT_MEMORY_POOL says otherwise. Measured when open windows
    still buffered raw readings (a drain of 2.5M): peak RSS 745 MiB with jemalloc, 980 with mimalloc
    (Arrow's default), 907 with the system allocator. Freed batch memory is returned between batches."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    with contextlib.suppress(NotImplementedError):
        pa.set_memory_pool(pa.jemalloc_memory_pool())


class Engine:
    def __init__(self, cfg: EngineConfig, scorer: Scorer) -> None:
        use_jemalloc()
        self.cfg = cfg
        self.scorer = scorer
        self.state = WindowState()
        self.history = HISTORY_SCHEMA.empty_table()
        self.offsets: dict[str, int] = {}  # "topic:partition" -> next offset to read
        self.totals = Totals()  # since the group's first run
        self.quality = QualitySample(cfg.quality_sample_rows)
        self.seq = 0  # batches checkpointed so far, in this group
        self.tag = sink.file_tag(cfg.group)
        saved = sink.load_state(cfg.lake, cfg.group)
        if saved is not None:
            tables, meta = saved
            self.state.open = tables.get("open", PARTIAL_SCHEMA.empty_table()).cast(PARTIAL_SCHEMA)
            self.state.dedupe = DedupeIndex.from_tables(cfg.window.window_ms, tables)
            self.history = tables.get("history", HISTORY_SCHEMA.empty_table())
            self.state.source_high_ms = {k: int(v) for k, v in meta["source_high_ms"].items()}
            self.state.watermark_ms = meta["watermark_ms"]
            self.offsets = {k: int(v) for k, v in meta["offsets"].items()}
            self.seq = int(meta.get("seq", 0))
            t = meta["totals"]
            self.totals = Totals(
                t["consumed"],
                t["windowed"],
                t["duplicates"],
                Counter(t["quarantined"]),
                t["windows"],
                t["scored"],
            )
        # Files of a batch that was written but never checkpointed (a crash in between) go: the batch is
        # read again from the checkpoint's offsets and written again under the same sequence number.
        sink.remove_after(cfg.lake, self.tag, self.seq)

    @property
    def pending(self) -> int:
        """Readings waiting in open windows."""
        return self.state.open_readings

    def process(self, batches: list[RawBatch], drain: bool = False, lagging: Collection[str] = ()) -> BatchOutput:
        """One micro-batch. `lagging`: sources ("topic:partition") with unread messages left in Kafka;
        they hold the watermark (see pipeline.window)."""
        pending_before = self.pending
        counts = Totals(consumed=sum(len(b) for b in batches))
        quarantine: list[pa.Table] = []
        readings: list[pa.Table] = []
        by_stream = {b.stream: b for b in batches}
        for batch in batches:
            contract = stream_contract(batch.stream)
            decoded = decode(batch, contract)
            quarantine.append(
                _quarantine(batch, decoded.rejected_src, decoded.rejected_reason, decoded.rejected_detail)
            )
            suite = readings_suite_name(batch.stream)
            routing = route(decoded.table, suite)  # on the raw ids: their rules (length, key match) need them
            table = decoded.table
            if self.cfg.pseudonym_key is not None:
                # From here on (quality sample, windows, state, scores) only pseudonyms exist.
                table = pseudonymise_columns(table, _ID_COLUMNS, self.cfg.pseudonym_key)
            self.quality.add(suite, table, routing.failed)
            bad = np.flatnonzero(routing.failed)
            if len(bad):
                src = np.asarray(table.column("src").to_numpy())[bad]
                quarantine.append(_quarantine(batch, src, routing.reason[bad].tolist(), [""] * len(bad)))
            good = table.filter(pa.array(~routing.failed))
            readings.append(to_readings(good, contract))
        canonical = pa.concat_tables(readings) if readings else None
        if canonical is None or len(canonical) == 0:
            canonical = _empty_canonical()
        result = step(self.state, canonical, self.cfg.window, drain=drain, lagging=lagging)
        counts.duplicates = int(result.duplicate.sum())
        late = np.flatnonzero(result.late)
        if len(late):
            late_rows = canonical.take(pa.array(late))
            streams = late_rows.column("stream").to_pylist()
            src_all = np.asarray(late_rows.column("src").to_numpy())
            for stream in set(streams):
                sel = np.asarray([s == stream for s in streams])
                quarantine.append(_quarantine(by_stream[stream], src_all[sel], "late", "window already closed"))
        windows = result.windows
        counts.windowed = result.windowed_readings
        counts.windows = len(windows)
        if len(windows):
            routing = route(windows, "windows")
            self.quality.add("windows", windows, routing.failed)
            windows = windows.append_column("dq_failure", pa.array(routing.expectation_labels(), pa.string()))
            scores, context = self.scorer.score(self.history, windows, self.cfg.window.window_ms)
            self.history = _prune_stale(
                context, self.state.watermark_ms, self.cfg.window.window_ms, self.scorer.length
            ).cast(HISTORY_SCHEMA)
        else:
            scores = _empty_scores(self.scorer)
            windows = windows.append_column("dq_failure", pa.array([], pa.string()))
        counts.scored = len(scores)
        dead = pa.concat_tables(quarantine) if quarantine else DEAD_LETTER_SCHEMA.empty_table()
        counts.quarantined = Counter(dead.column("reason").to_pylist())
        q = self._lake_quarantine(dead)
        for b in batches:
            if len(b):
                for p in np.unique(b.partitions).tolist():
                    key = f"{b.topic}:{p}"
                    self.offsets[key] = max(self.offsets.get(key, 0), int(b.offsets[b.partitions == p].max()) + 1)
        self.totals.add(counts)
        seq = self.seq + 1
        return BatchOutput(f"{self.tag}-{seq:09d}", seq, scores, windows, q, dead, counts, pending_before, self.pending)

    def _lake_quarantine(self, dead: pa.Table) -> pa.Table:
        q = dead.drop_columns(["headers"])
        if self.cfg.pseudonym_key is None:
            return q
        # The original bytes carry the raw ids: they stay in Kafka (the dead-letter topic), not in the lake.
        q = pseudonymise_columns(q, ("patient_id",), self.cfg.pseudonym_key)
        n = len(q)
        q = q.set_column(q.schema.get_field_index("key"), "key", pa.nulls(n, pa.binary()))
        return q.set_column(q.schema.get_field_index("value"), "value", pa.nulls(n, pa.binary()))

    def write(self, out: BatchOutput) -> None:
        """Parquet first, then the state checkpoint; the caller commits Kafka offsets after this returns."""
        for name in sink.DATASETS:
            sink.write_dataset(self.cfg.lake, name, getattr(out, name), out.batch_id)
        self.seq = out.seq
        self.checkpoint()
        pa.default_memory_pool().release_unused()  # hand freed batch memory back to the OS between batches

    def checkpoint(self) -> None:
        meta = {
            "source_high_ms": self.state.source_high_ms,
            "watermark_ms": self.state.watermark_ms,
            "offsets": self.offsets,
            "seq": self.seq,
            "totals": self.totals.as_dict(),
            "saved_at": datetime.now(UTC).isoformat(),
        }
        dedupe = self.state.dedupe.to_tables() if self.state.dedupe is not None else {}
        tables = {"open": self.state.open, "history": self.history, **dedupe}
        sink.save_state(self.cfg.lake, self.cfg.group, tables, meta)

    def write_quality_sample(self, sample_id: str) -> dict[str, dict[str, Any]]:
        """Write the sample of every suite for Great Expectations (see pipeline.quality.validate_pending) and
        return, per suite, what the Arrow-compiled rules found on every row since the last sample."""
        return self.quality.write(self.cfg.lake / "_quality", sample_id)


class QualitySample:
    """A bounded, per-suite sample of validated rows: every failed row first, then a deterministic stride
    over passing rows. Routing applies the Arrow-compiled suites to every row; Great Expectations itself
    validates the written sample afterwards, outside the scoring run (pipeline.quality.validate_pending)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.tables: dict[str, list[pa.Table]] = {}
        self.rows: Counter[str] = Counter()  # rows in the sample being gathered
        # Since this engine started (one run), over all samples written:
        self.checked: Counter[str] = Counter()  # rows the Arrow-compiled suite checked
        self.failed: Counter[str] = Counter()  # of those, rows with an unexpected value
        self.sampled: Counter[str] = Counter()  # rows written to samples
        self.last: dict[str, str] = {}  # suite -> path of its latest sample

    def add(self, suite: str, table: pa.Table, failed: np.ndarray) -> None:
        self.checked[suite] += len(table)
        self.failed[suite] += int(np.count_nonzero(failed))
        room = self.cap - self.rows[suite]
        if room <= 0 or len(table) == 0:
            return
        bad = np.flatnonzero(failed)[:room]
        good = np.flatnonzero(~failed)
        stride = max(1, len(good) // max(1, (room - len(bad)) // 4))  # leave room for later batches
        take = np.concatenate([bad, good[::stride][: max(0, room - len(bad))]])
        part = table.take(pa.array(np.sort(take)))
        self.tables.setdefault(suite, []).append(part)
        self.rows[suite] += len(part)

    def write(self, out_dir: Path, sample_id: str) -> dict[str, dict[str, Any]]:
        """Write each suite's sample to out_dir/<suite>/<sample_id>.parquet (Great Expectations' result will
        go beside it as .json) and start a new sample. Returns per suite, since the run started: rows checked
        and failed by the Arrow-compiled rules, rows sampled, and the latest sample's path."""
        for suite, parts in self.tables.items():
            table = pa.concat_tables(parts)
            drop = [c for c in ("src",) if c in table.column_names]
            sample = out_dir / suite / f"{sample_id}.parquet"
            write_sample(table.drop_columns(drop), sample)
            self.sampled[suite] += len(table)
            self.last[suite] = str(sample)
        self.tables.clear()
        self.rows.clear()
        return {
            suite: {
                "checked": self.checked[suite],
                "failed": self.failed[suite],
                "sampled": self.sampled[suite],
                "sample": self.last.get(suite, ""),
            }
            for suite in sorted(self.checked)
            if self.checked[suite]
        }


def _quarantine(batch: RawBatch, src: np.ndarray, reason: list[str] | str, detail: list[str] | str) -> pa.Table:
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


def _prune_stale(context: pa.Table, watermark_ms: int | None, window_ms: int, length: int) -> pa.Table:
    context = context.select(HISTORY_SCHEMA.names)
    if watermark_ms is None or len(context) == 0:
        return context
    start = context.column("window_start").cast(pa.int64())
    return context.filter(pc.greater(start, watermark_ms - (length + 1) * window_ms))


def _empty_canonical() -> pa.Table:
    return READINGS_SCHEMA.append(pa.field("source", pa.string())).append(pa.field("src", pa.int32())).empty_table()


def _empty_scores(scorer: Scorer) -> pa.Table:
    empty = HISTORY_SCHEMA.empty_table()
    from pipeline.features import window_schema

    scores, _ = scorer.score(empty, window_schema().empty_table(), 300_000)
    return scores


__all__ = ["STREAMS", "BatchOutput", "Engine", "EngineConfig", "Totals"]
