"""One micro-batch through every stage, as plain functions over Arrow tables; no Kafka, no Prefect, no files.

    RawBatch per topic -> decode -> route (suites) -> canonical readings -> window.step -> features
    -> score -> alerts -> BatchOutput: (risk_scores, windows, quarantine, alerts, acks, dead letters) tables
    + counts; the ack topic's messages (pipeline.alerts.ACK_STREAM) go to alerting, not to the windows

`Engine` holds what a run carries from batch to batch (`EngineState`: open windows, watermark, scoring
context, open alerts, offsets, totals). It reads and writes nothing: `runtime.loop` persists each batch's outputs and
then the state (`snapshot()`), and a restart builds the engine from the last saved state.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from models.scorer import COURSE_SCHEMA, HISTORY_SCHEMA, Scorer, course_rows, prune_history
from pipeline.alert_policy import AlertPolicy, default_policy
from pipeline.alerts import ACK_SCHEMA, ACK_STREAM, ALERT_SCHEMA, AlertState, apply_acks
from pipeline.alerts import evaluate as evaluate_alerts
from pipeline.batch import RawBatch
from pipeline.contract import readings_suite_name, stream_contract
from pipeline.decode import decoded_batch
from pipeline.features import window_schema
from pipeline.privacy import pseudonymise_columns
from pipeline.quarantine import DEAD_LETTER_SCHEMA, quarantine_rows
from pipeline.readings import PROVENANCE_SCHEMA, empty_table, to_readings
from pipeline.sink import DATASETS
from pipeline.validate import route
from pipeline.window import WindowConfig, WindowState, step

_ID_COLUMNS = ("patient_id", "key", "device_id")  # device ids often embed the patient id (e.g. "cgm-P000042")


@dataclass
class Totals:
    consumed: int = 0
    windowed: int = 0
    duplicates: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    windows: int = 0
    scored: int = 0
    acks: int = 0  # acknowledgements applied (a rejected one is quarantined)
    alerts: Counter[str] = field(default_factory=Counter)  # alert events by "condition:state"

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
        self.acks += other.acks
        self.alerts.update(other.alerts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "windowed": self.windowed,
            "duplicates": self.duplicates,
            "quarantined": dict(self.quarantined),
            "windows": self.windows,
            "scored": self.scored,
            "acks": self.acks,
            "alerts": dict(self.alerts),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Totals:
        return cls(
            d["consumed"],
            d["windowed"],
            d["duplicates"],
            Counter(d["quarantined"]),
            d["windows"],
            d["scored"],
            d.get("acks", 0),
            Counter(d.get("alerts", {})),
        )


@dataclass
class EngineState:
    """Everything a restart needs to carry on exactly where the last saved batch ended."""

    window: WindowState = field(default_factory=WindowState)
    history: pa.Table = field(default_factory=lambda: empty_table(HISTORY_SCHEMA))  # recent windows: scoring context
    offsets: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> next offset to read
    seq: int = 0  # batches processed so far in this group: names the batch's files
    totals: Totals = field(default_factory=Totals)  # since the group's first run
    alerts: AlertState = field(default_factory=AlertState)  # open alerts and what raises the next ones
    # the patients' recent course (6 hours of a few bits per window) for a model that reads it
    course: pa.Table = field(default_factory=lambda: empty_table(COURSE_SCHEMA))


@dataclass
class BatchOutput:
    seq: int  # the batch's number in its group: its Parquet files are named by it
    risk_scores: pa.Table
    windows: pa.Table
    quarantine: pa.Table  # as written to the lake (pseudonymised when that is on)
    dead_letters: pa.Table  # the same messages with their original bytes and headers, for the dead-letter topic
    counts: Totals
    pending_before: int
    pending_after: int
    alerts: pa.Table = field(default_factory=ALERT_SCHEMA.empty_table)  # alert events, also published
    acks: pa.Table = field(default_factory=ACK_SCHEMA.empty_table)  # acknowledgements applied (audit)
    # For operations (metrics): messages per topic, the watermark and next offsets after it, when it started
    consumed_by_topic: dict[str, int] = field(default_factory=dict)
    watermark_ms: int | None = None
    offsets: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0  # time.monotonic()

    def datasets(self) -> dict[str, pa.Table]:
        """The tables the lake keeps, by dataset name."""
        return {name: getattr(self, name) for name in DATASETS}


@dataclass
class EngineConfig:
    window: WindowConfig = field(default_factory=WindowConfig)
    quality_sample_rows: int = 20_000  # rows per suite and sample that Great Expectations itself validates
    pseudonym_key: bytes | None = None  # set: patient and device ids are pseudonymised in everything written
    alert_policy: AlertPolicy = field(default_factory=default_policy)


class Engine:
    def __init__(self, cfg: EngineConfig, scorer: Scorer, restored: EngineState | None = None) -> None:
        self.cfg = cfg
        self.scorer = scorer
        saved = restored or EngineState()
        self.state = saved.window
        self.history = saved.history
        self.course = saved.course
        self.offsets = dict(saved.offsets)
        self.seq = saved.seq
        self.totals = saved.totals
        self.alerts = saved.alerts
        self.quality = QualitySample(cfg.quality_sample_rows)

    @property
    def pending(self) -> int:
        """Readings waiting in open windows."""
        return self.state.open_readings

    def snapshot(self) -> EngineState:
        """The state after the last processed batch, for the checkpoint (shares the tables; not a copy)."""
        return EngineState(
            self.state, self.history, dict(self.offsets), self.seq, self.totals, self.alerts, self.course
        )

    def process(self, batches: list[RawBatch], drain: bool = False, lagging: Collection[str] = ()) -> BatchOutput:
        """One micro-batch. `lagging`: sources ("topic:partition") with unread messages left in Kafka;
        they hold the watermark (see pipeline.window)."""
        pending_before = self.pending
        started_at, now = time.monotonic(), datetime.now(UTC).replace(microsecond=0)
        consumed_by_topic = _sizes(batches)
        counts = Totals(consumed=sum(len(b) for b in batches))
        quarantine: list[pa.Table] = []
        readings: list[pa.Table] = []
        acks, events = [], []
        for batch in (b for b in batches if b.stream == ACK_STREAM):  # acks first: they apply to this batch
            acked = apply_acks(self.alerts, self.cfg.alert_policy, batch, now)
            quarantine.append(quarantine_rows(batch, acked.rejected_src, acked.reasons, acked.details))
            acks.append(acked.applied)
            events += acked.events
        batches = [b for b in batches if b.stream != ACK_STREAM]
        lagging = [s for s in lagging if not s.rpartition(":")[0].endswith(ACK_STREAM)]  # acks hold no watermark
        by_stream = {b.stream: b for b in batches}
        for batch in batches:
            contract = stream_contract(batch.stream)
            decoded = decoded_batch(batch, contract)  # decoded ahead by the consumer process, or now
            quarantine.append(
                quarantine_rows(batch, decoded.rejected_src, decoded.rejected_reason, decoded.rejected_detail)
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
                quarantine.append(quarantine_rows(batch, src, routing.reason[bad].tolist(), [""] * len(bad)))
            good = table.filter(pa.array(~routing.failed))
            readings.append(to_readings(good, contract))
        canonical = pa.concat_tables(readings) if readings else None
        if canonical is None or len(canonical) == 0:
            canonical = PROVENANCE_SCHEMA.empty_table()
        result = step(self.state, canonical, self.cfg.window, drain=drain, lagging=lagging)
        counts.duplicates = int(result.duplicate.sum())
        late = np.flatnonzero(result.late)
        if len(late):
            late_rows = canonical.take(pa.array(late))
            streams = late_rows.column("stream").to_pylist()
            src_all = np.asarray(late_rows.column("src").to_numpy())
            for stream in set(streams):
                sel = np.asarray([s == stream for s in streams])
                quarantine.append(quarantine_rows(by_stream[stream], src_all[sel], "late", "window already closed"))
        windows = result.windows
        counts.windowed = result.windowed_readings
        counts.windows = len(windows)
        if len(windows):
            routing = route(windows, "windows")
            self.quality.add("windows", windows, routing.failed)
            windows = windows.append_column("dq_failure", pa.array(routing.expectation_labels(), pa.string()))
            course = pa.concat_tables([self.course, course_rows(windows)]) if self.scorer.course_windows else None
            scores, context = self.scorer.score(self.history, windows, course)
            window_ms, watermark = self.cfg.window.window_ms, self.state.watermark_ms
            self.history = prune_history(context, window_ms, self.scorer.length, watermark).cast(HISTORY_SCHEMA)
            if course is not None:
                self.course = prune_history(course, window_ms, self.scorer.course_windows, watermark, COURSE_SCHEMA)
        else:
            scores = empty_scores(self.scorer)
            windows = windows.append_column("dq_failure", pa.array([], pa.string()))
        counts.scored = len(scores)
        accepted = canonical.filter(pa.array(~result.late & ~result.duplicate))
        watermark = self.state.watermark_ms
        horizon = None if drain or watermark is None else watermark - self.cfg.window.lateness_ms
        source_high = self.state.source_high_ms
        policy = self.cfg.alert_policy
        alerts = evaluate_alerts(self.alerts, policy, scores, windows, accepted, source_high, horizon, now, events)
        by = zip(alerts.column("condition").to_pylist(), alerts.column("state").to_pylist(), strict=True)
        counts.alerts = Counter(f"{condition}:{state}" for condition, state in by)
        acks_applied = pa.concat_tables(acks) if acks else ACK_SCHEMA.empty_table()
        counts.acks = len(acks_applied)
        dead = pa.concat_tables(quarantine) if quarantine else DEAD_LETTER_SCHEMA.empty_table()
        counts.quarantined = Counter(dead.column("reason").to_pylist())
        q = self._lake_quarantine(dead)
        for b in batches:
            if len(b):
                for p in np.unique(b.partitions).tolist():
                    key = f"{b.topic}:{p}"
                    self.offsets[key] = max(self.offsets.get(key, 0), int(b.offsets[b.partitions == p].max()) + 1)
        self.totals.add(counts)
        self.seq += 1
        return BatchOutput(
            self.seq,
            scores,
            windows,
            q,
            dead,
            counts,
            pending_before,
            self.pending,
            alerts,
            acks_applied,
            consumed_by_topic,
            self.state.watermark_ms,
            dict(self.offsets),
            started_at,
        )

    def _lake_quarantine(self, dead: pa.Table) -> pa.Table:
        q = dead.drop_columns(["headers"])
        if self.cfg.pseudonym_key is None:
            return q
        # The original bytes carry the raw ids: they stay in Kafka (the dead-letter topic), not in the lake.
        q = pseudonymise_columns(q, ("patient_id",), self.cfg.pseudonym_key)
        n = len(q)
        q = q.set_column(q.schema.get_field_index("key"), "key", pa.nulls(n, pa.binary()))
        return q.set_column(q.schema.get_field_index("value"), "value", pa.nulls(n, pa.binary()))


class QualitySample:
    """A bounded, per-suite sample of validated rows: every failed row first, then a deterministic stride
    over passing rows. Routing applies the Arrow-compiled suites to every row; Great Expectations itself
    validates the written sample afterwards, outside the scoring run (ops.quality.validate_pending)."""

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

    def write(self, write_sample: Callable[[str, pa.Table], str]) -> dict[str, dict[str, Any]]:
        """Hand each suite's sample to `write_sample(suite, table)`, which stores it and returns where, and
        start a new sample. Returns per suite, since the run started: rows checked and failed by the
        Arrow-compiled rules, rows sampled, and the latest sample's path."""
        for suite, parts in self.tables.items():
            table = pa.concat_tables(parts)
            drop = [c for c in ("src",) if c in table.column_names]
            self.last[suite] = write_sample(suite, table.drop_columns(drop))
            self.sampled[suite] += len(table)
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


def _sizes(batches: list[RawBatch]) -> dict[str, int]:
    sizes: Counter[str] = Counter()
    for b in batches:
        sizes[b.topic] += len(b)
    return dict(sizes)


def empty_scores(scorer: Scorer) -> pa.Table:
    """A risk_scores table with no rows, in the scorer's columns."""
    scores, _ = scorer.score(HISTORY_SCHEMA.empty_table(), window_schema().empty_table())
    return scores


__all__ = ["BatchOutput", "Engine", "EngineConfig", "EngineState", "Totals"]
