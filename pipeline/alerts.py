"""Alerts: raised once, repeated while nobody reacts, resolved when the patient recovers; policy as data.

Semantics (`schemas/alert_policy.json` holds the numbers; `pipeline.alert_policy` reads and checks them):
- Window conditions read one column of each scored window: a prediction (a probability, the overall risk,
  the lower end of the glucose forecast) or an observation (the window's mean heart rate, respiration rate
  or glucose: the model predicts an event's onset, so an event under way is alerted on what is observed).
  A condition raises after `windows` consecutive windows at its raise level and resolves at the first
  window past its clear level (hysteresis: clear sits below raise, or above it for a "below" condition
  such as predicted low glucose). A null value (not assessed, or no reading) neither raises, resolves nor
  breaks a run of windows.
- A fall alerts at once, from the fall reading in the batch that consumed it (confidence >= the policy's,
  a missing confidence counts as certain), not when its window closes. Further falls join the open alert;
  an acknowledged fall alert resolves after `clear_after_minutes` without another fall.
- A sensor (CGM, heart rate, respiration) of a patient that was reporting goes silent when a whole closed
  window ending `after_minutes` or more past its last data has none of it; silence is judged only where
  the patient's partition of that stream has data up to that window (its high-water mark), so a topic or
  partition outage pages nobody. It resolves in the first window with data again.
- Repeats come every `repeat_minutes` of event time while unacknowledged, at most `max_repeats` of them
  (then the alert stays open, quiet); an acknowledgement stops them until the alert resolves or the snooze
  ends, which starts a new count.
- Everything runs in event time: closed windows in order of their end, timers (repeats, fall resolution)
  up to the horizon (watermark - allowed lateness: every window ending there has closed). A replay or a
  restart from the checkpoint with other batch sizes gives the same (alert_id, state, sequence) events;
  `alert_id` hashes (patient, condition, stream, episode start). Only `emitted_at` is wall clock. Acks
  take effect when consumed (their Kafka timestamp starts a snooze).

Plain functions over Arrow tables and a small state (`AlertState`: per-patient arrays plus the open alerts,
few); the engine calls `apply_acks` and `evaluate` once per batch and the checkpoint keeps the state.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.alert_policy import SILENT_STREAMS, AlertPolicy, WindowRule
from pipeline.batch import RawBatch
from pipeline.readings import epoch_ms

ACK_STREAM = "alerts.ack"  # the ack topic is <topic_prefix>alerts.ack
STATES: tuple[str, ...] = ("raised", "repeated", "acknowledged", "resolved")
NEVER = np.iinfo(np.int64).min
GAPS_KEPT = 5  # per patient and stream: the latest intervals between readings, whose median is its cadence
MAX_SNOOZE_MINUTES = 24 * 60

Events = list[dict[str, Any]]  # alert events as rows of ALERT_SCHEMA, before they become a table
_TS = pa.timestamp("ms", tz="UTC")
ALERT_SCHEMA = pa.schema(
    [
        ("alert_id", pa.string()),
        ("patient_id", pa.string()),
        ("condition", pa.string()),
        ("stream", pa.string()),
        ("state", pa.string()),
        ("sequence", pa.int32()),
        ("severity", pa.string()),
        ("event_time", _TS),
        ("emitted_at", _TS),
        ("reason", pa.string()),
        ("value", pa.float64()),
        ("threshold", pa.float64()),
        ("evidence", pa.float64()),
        ("window_end", _TS),
        ("acked_by", pa.string()),
        ("policy_version", pa.string()),
    ]
)
ACK_SCHEMA = pa.schema(
    [
        ("alert_id", pa.string()),
        ("patient_id", pa.string()),
        ("condition", pa.string()),
        ("by", pa.string()),
        ("snooze_minutes", pa.float64()),
        ("acked_at", _TS),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
    ]
)


# --- the state ---------------------------------------------------------------------------------------


@dataclass
class OpenAlert:
    alert_id: str
    patient_id: str
    condition: str
    stream: str  # "" unless sensor_silent
    started_ms: int  # event time of the raise
    sequence: int  # of the last event emitted
    severity: str
    next_repeat_ms: int | None  # None: no repeat (acknowledged without snooze)
    repeat_ms: int
    value: float  # the numbers of the raise, quoted by repeats
    threshold: float
    evidence: float
    reason: str
    acked_by: str = ""
    last_evidence_ms: int = 0  # falls: the latest fall reading
    repeats: int = 0  # repeats emitted since the raise or the last acknowledgement (AlertPolicy.max_repeats)


_OPEN_SCHEMA = pa.schema(
    [
        ("alert_id", pa.string()),
        ("patient_id", pa.string()),
        ("condition", pa.string()),
        ("stream", pa.string()),
        ("started_ms", pa.int64()),
        ("sequence", pa.int32()),
        ("severity", pa.string()),
        ("next_repeat_ms", pa.int64()),
        ("repeat_ms", pa.int64()),
        ("value", pa.float64()),
        ("threshold", pa.float64()),
        ("evidence", pa.float64()),
        ("reason", pa.string()),
        ("acked_by", pa.string()),
        ("last_evidence_ms", pa.int64()),
        ("repeats", pa.int32()),
    ]
)


class AlertState:
    """What alerting carries from batch to batch: per patient (an index of ids), each window condition's run
    of windows at the raise level and each sensor's last window with data, Kafka source and latest intervals
    between readings; the open alerts by (patient, condition, stream); the event time up to which timers have
    fired."""

    def __init__(self) -> None:
        self.patients: pa.Array = pa.nulls(0, pa.string())  # not pa.array([]): see readings.empty_table
        self.streak: dict[str, np.ndarray] = {}  # condition -> int32 per patient
        self.last_present: dict[str, np.ndarray] = {}  # stream -> window end (ms) of its last data, NEVER if none
        self.source: dict[str, np.ndarray] = {}  # stream -> "topic:partition" per patient ("" unknown)
        # stream -> (patients, GAPS_KEPT) intervals between readings in ms, newest first; 0 unknown
        self.gaps: dict[str, np.ndarray] = {}
        self.open: dict[tuple[str, str, str], OpenAlert] = {}
        self.horizon_ms: int | None = None

    def __len__(self) -> int:
        return len(self.patients)

    def index(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Positions of `ids` in the patient index, adding the new ones."""
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        code = pc.index_in(ids, value_set=self.patients)
        if code.null_count:
            fresh = pc.unique(ids.filter(pc.is_null(code)))
            self.patients = pa.concat_arrays([self.patients, fresh.cast(pa.string())])
            code = pc.index_in(ids, value_set=self.patients)
        return np.asarray(code.to_numpy(zero_copy_only=False), dtype=np.int64)

    def _column(self, store: dict[str, np.ndarray], name: str, fill: Any, dtype: Any) -> np.ndarray:
        arr = store.get(name)
        n = len(self.patients)
        if arr is None or len(arr) < n:
            grown = np.full(n, fill, dtype=dtype)
            if arr is not None:
                grown[: len(arr)] = arr
            store[name] = arr = grown
        return arr

    def streaks(self, condition: str) -> np.ndarray:
        return self._column(self.streak, condition, 0, np.int32)

    def last_seen(self, stream: str) -> np.ndarray:
        return self._column(self.last_present, stream, NEVER, np.int64)

    def sources(self, stream: str) -> np.ndarray:
        return self._column(self.source, stream, "", object)

    def recent_gaps(self, stream: str) -> np.ndarray:
        arr = self.gaps.get(stream)
        n = len(self.patients)
        if arr is None or len(arr) < n:
            grown = np.zeros((n, GAPS_KEPT), dtype=np.int64)
            if arr is not None:
                grown[: len(arr)] = arr
            self.gaps[stream] = arr = grown
        return arr

    def opened(self, condition: str, stream: str = "") -> np.ndarray:
        """Per patient: is an alert of this condition (and stream) open?"""
        flags = np.zeros(len(self.patients), dtype=bool)
        ids = [a.patient_id for a in self.open.values() if a.condition == condition and a.stream == stream]
        if ids:
            flags[self.index(pa.array(ids, pa.string()))] = True
        return flags

    def to_tables(self) -> dict[str, pa.Table]:
        for name in list(self.streak):
            self.streaks(name)
        for name in list(self.last_present):
            self.last_seen(name)
        for name in list(self.source):
            self.sources(name)
        for name in list(self.gaps):
            self.recent_gaps(name)
        tracks: dict[str, Any] = {"patient_id": self.patients}
        tracks |= {f"streak:{k}": pa.array(v, pa.int32()) for k, v in self.streak.items()}
        tracks |= {f"last_present:{k}": pa.array(v, pa.int64()) for k, v in self.last_present.items()}
        tracks |= {f"source:{k}": pa.array(v.tolist(), pa.string()) for k, v in self.source.items()}
        tracks |= {
            f"gaps:{k}": pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), pa.int64()), GAPS_KEPT)
            for k, v in self.gaps.items()
        }
        return {
            "alert_tracks": pa.table(tracks),
            "alerts_open": pa.table(  # column by column: dataclasses.asdict per alert cost 60 us each
                {name: [getattr(a, name) for a in self.open.values()] for name in _OPEN_SCHEMA.names},
                schema=_OPEN_SCHEMA,
            ),
            "alert_clock": pa.table({"horizon_ms": pa.array([self.horizon_ms], pa.int64())}),
        }

    @classmethod
    def from_tables(cls, tables: dict[str, pa.Table]) -> AlertState:
        state = cls()
        tracks = tables.get("alert_tracks")
        if tracks is not None and len(tracks.column_names):
            state.patients = tracks.column("patient_id").combine_chunks().cast(pa.string())
            for name in tracks.column_names:
                kind, _, key = name.partition(":")
                col = tracks.column(name)
                if kind == "streak":
                    state.streak[key] = np.asarray(col.to_numpy(), dtype=np.int32).copy()
                elif kind == "last_present":
                    state.last_present[key] = np.asarray(col.to_numpy(), dtype=np.int64).copy()
                elif kind == "source":
                    state.source[key] = np.asarray(col.to_pylist(), dtype=object)
                elif kind == "gaps":  # a checkpoint from before cadences: none known, after_minutes alone
                    flat = col.combine_chunks().flatten().to_numpy()
                    state.gaps[key] = np.asarray(flat, dtype=np.int64).reshape(-1, GAPS_KEPT).copy()
        if "alerts_open" in tables:
            for row in tables["alerts_open"].to_pylist():
                a = OpenAlert(**row)  # a checkpoint from before `repeats`: none counted yet
                state.open[(a.patient_id, a.condition, a.stream)] = a
        if "alert_clock" in tables and len(tables["alert_clock"]):
            state.horizon_ms = tables["alert_clock"].column("horizon_ms")[0].as_py()
        return state


# --- acknowledgements --------------------------------------------------------------------------------


@dataclass
class AckResult:
    applied: pa.Table  # ACK_SCHEMA: the audit trail (`acks/` in the lake)
    rejected_src: np.ndarray  # positions in the batch of acks to quarantine
    reasons: list[str]
    details: list[str]
    events: list[dict[str, Any]] = field(default_factory=list)  # `acknowledged` alert events


def apply_acks(state: AlertState, policy: AlertPolicy, batch: RawBatch, now: datetime) -> AckResult:
    """Apply the acknowledgements of one poll of the ack topic (JSON: alert_id, by, optional snooze_minutes).
    A malformed ack, or one for no open alert, is rejected with its reason (for the quarantine)."""
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    reasons: list[str] = []
    details: list[str] = []
    events: list[dict[str, Any]] = []
    by_id = {a.alert_id: a for a in state.open.values()}
    values = batch.values.to_pylist()
    for i, raw in enumerate(values):  # acks are typed by people: a handful per batch
        fault, detail, ack = _parse_ack(raw)
        if ack is not None and ack["alert_id"] not in by_id:
            fault, detail = "unknown_alert", f"no open alert {ack['alert_id']}"
        if fault or ack is None:
            bad.append(i)
            reasons.append(fault or "invalid_ack")
            details.append(detail)
            continue
        a = by_id[ack["alert_id"]]
        at_ms = int(batch.timestamps_ms[i])
        snooze = ack.get("snooze_minutes")
        a.acked_by = ack["by"]
        a.next_repeat_ms = at_ms + int(snooze * 60_000) if snooze else None
        a.repeats = 0
        until = f", snoozed {snooze:g} min" if snooze else ""
        _emit(events, a, "acknowledged", at_ms, now, f"acknowledged by {a.acked_by}{until}", policy)
        rows.append(
            {
                "alert_id": a.alert_id,
                "patient_id": a.patient_id,
                "condition": a.condition,
                "by": a.acked_by,
                "snooze_minutes": float(snooze) if snooze else None,
                "acked_at": at_ms,
                "topic": batch.topic,
                "partition": int(batch.partitions[i]),
                "offset": int(batch.offsets[i]),
            }
        )
    applied = pa.Table.from_pylist(rows, ACK_SCHEMA) if rows else ACK_SCHEMA.empty_table()
    return AckResult(applied, np.asarray(bad, dtype=np.int64), reasons, details, events)


def _parse_ack(raw: bytes | None) -> tuple[str, str, dict[str, Any] | None]:
    """(fault, detail, ack): fault is "" for a well-formed ack."""
    if not raw:
        return "empty_message", "", None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return "invalid_json", str(exc)[:200], None
    if not isinstance(doc, dict):
        return "not_an_object", type(doc).__name__, None
    if not isinstance(doc.get("alert_id"), str) or not doc["alert_id"]:
        return "missing_alert_id", "alert_id must be a non-empty string", None
    if not isinstance(doc.get("by"), str) or not doc["by"].strip():
        return "missing_by", "by must name who acknowledged", None
    snooze = doc.get("snooze_minutes")
    if snooze is not None and (
        isinstance(snooze, bool) or not isinstance(snooze, int | float) or not 0 <= snooze <= MAX_SNOOZE_MINUTES
    ):
        return "bad_snooze", f"snooze_minutes must be a number within 0-{MAX_SNOOZE_MINUTES}, not {snooze!r}", None
    return "", "", {"alert_id": doc["alert_id"], "by": doc["by"].strip(), "snooze_minutes": snooze}


# --- the lifecycle -----------------------------------------------------------------------------------


def evaluate(
    state: AlertState,
    policy: AlertPolicy,
    scores: pa.Table,
    windows: pa.Table,
    readings: pa.Table,
    source_high_ms: dict[str, int],
    horizon_ms: int | None,
    now: datetime,
    events: Events | None = None,
) -> pa.Table:
    """One batch: falls from its accepted `readings`, then its closed windows (`scores` and the row-aligned
    `windows`) in order of their end, then timers up to `horizon_ms`. Returns the alert events (ALERT_SCHEMA),
    after any `events` already emitted for this batch (acknowledgements)."""
    out: Events = list(events or [])
    _note_sources(state, readings)
    _falls(state, policy, readings, now, out)
    if len(scores):
        if len(windows) != len(scores) or not windows.column("patient_id").equals(scores.column("patient_id")):
            raise ValueError("scores and windows must be row-aligned (the same patient in each row)")
        ends = epoch_ms(scores.column("window_end"))
        for end in np.unique(ends).tolist():
            _fire_timers(state, policy, end, now, out)
            rows = pa.array(np.flatnonzero(ends == end))
            _window_step(state, policy, scores.take(rows), windows.take(rows), end, source_high_ms, now, out)
            state.horizon_ms = max(end, state.horizon_ms or end)
    if horizon_ms is not None:
        _fire_timers(state, policy, horizon_ms, now, out)
        state.horizon_ms = max(horizon_ms, state.horizon_ms or horizon_ms)
    return pa.Table.from_pylist(out, ALERT_SCHEMA) if out else ALERT_SCHEMA.empty_table()


def alert_id(patient_id: str, condition: str, stream: str, started_ms: int) -> str:
    """Stable across restarts and replays: the same episode always hashes to the same id."""
    return hashlib.sha256(f"{patient_id}\x1f{condition}\x1f{stream}\x1f{started_ms}".encode()).hexdigest()[:20]


def _emit(
    out: Events,
    a: OpenAlert,
    state: str,
    event_ms: int,
    now: datetime,
    reason: str,
    policy: AlertPolicy,
    window_end_ms: int | None = None,
    value: float | None = None,
) -> None:
    a.sequence += 1
    out.append(
        {
            "alert_id": a.alert_id,
            "patient_id": a.patient_id,
            "condition": a.condition,
            "stream": a.stream or None,
            "state": state,
            "sequence": a.sequence,
            "severity": a.severity,
            "event_time": event_ms,
            "emitted_at": now,
            "reason": reason,
            "value": _finite(a.value if value is None else value),
            "threshold": _finite(a.threshold),
            "evidence": _finite(a.evidence),
            "window_end": window_end_ms,
            "acked_by": a.acked_by or None,
            "policy_version": policy.version,
        }
    )


def _raise(
    state: AlertState,
    out: Events,
    policy: AlertPolicy,
    now: datetime,
    patient: str,
    condition: str,
    stream: str,
    event_ms: int,
    episode_ms: int,
    severity: str,
    repeat_ms: int,
    numbers: tuple[float, float, float],
    reason: str,
    window_end_ms: int | None = None,
) -> OpenAlert:
    a = OpenAlert(
        alert_id(patient, condition, stream, episode_ms),
        patient,
        condition,
        stream,
        event_ms,
        0,
        severity,
        event_ms + repeat_ms,
        repeat_ms,
        *numbers,
        reason,
        last_evidence_ms=event_ms,
    )
    state.open[(patient, condition, stream)] = a
    _emit(out, a, "raised", event_ms, now, reason, policy, window_end_ms)
    return a


def _resolve(
    state: AlertState,
    out: Events,
    a: OpenAlert,
    event_ms: int,
    now: datetime,
    reason: str,
    policy: AlertPolicy,
    window_end_ms: int | None = None,
    value: float | None = None,
) -> None:
    _emit(out, a, "resolved", event_ms, now, reason, policy, window_end_ms, value)
    del state.open[(a.patient_id, a.condition, a.stream)]


def _fire_timers(state: AlertState, policy: AlertPolicy, until_ms: int, now: datetime, out: Events) -> None:
    """Repeats due and acknowledged falls gone quiet, up to `until_ms` of event time (open alerts are few)."""
    for a in list(state.open.values()):
        end_ms = None
        if a.condition == "fall" and a.acked_by and policy.fall is not None:
            end_ms = a.last_evidence_ms + policy.fall.clear_after_ms
            end_ms = end_ms if end_ms <= until_ms else None
        last_due = until_ms if end_ms is None else end_ms - 1
        while a.next_repeat_ms is not None and a.next_repeat_ms <= last_due:
            minutes = (a.next_repeat_ms - a.started_ms) / 60_000
            who = f"acknowledged by {a.acked_by}, snooze over" if a.acked_by else "not acknowledged"
            a.repeats += 1
            last = f"; last repeat ({a.repeats}): open until acknowledged" if a.repeats >= policy.max_repeats else ""
            reason = f"{a.reason}; open {minutes:.0f} min, {who}{last}"
            _emit(out, a, "repeated", a.next_repeat_ms, now, reason, policy)
            a.next_repeat_ms = a.next_repeat_ms + a.repeat_ms if a.repeats < policy.max_repeats else None
        if end_ms is not None and policy.fall is not None:
            quiet = policy.fall.clear_after_ms / 60_000
            _resolve(state, out, a, end_ms, now, f"no further fall for {quiet:g} min after acknowledgement", policy)


def _falls(state: AlertState, policy: AlertPolicy, readings: pa.Table, now: datetime, out: Events) -> None:
    rule = policy.fall
    if rule is None or len(readings) == 0:
        return
    conf = pc.fill_null(readings.column("fall_confidence"), 1.0)
    mask = pc.and_(
        pc.and_(pc.equal(readings.column("stream"), "fall"), pc.greater(readings.column("value"), 0.5)),
        pc.greater_equal(conf, rule.min_confidence),
    )
    falls = readings.filter(pc.fill_null(mask, False))
    if len(falls) == 0:
        return
    times = epoch_ms(falls.column("event_time")).tolist()
    confidence = pc.fill_null(falls.column("fall_confidence"), 1.0).to_pylist()
    impact = falls.column("impact_g").to_pylist()
    for patient, t, c, g in zip(falls.column("patient_id").to_pylist(), times, confidence, impact, strict=True):
        a = state.open.get((patient, "fall", ""))
        if a is not None and a.acked_by and t >= a.last_evidence_ms + rule.clear_after_ms:
            _fire_timers(state, policy, a.last_evidence_ms + rule.clear_after_ms, now, out)
            a = state.open.get((patient, "fall", ""))
        if a is not None:
            a.last_evidence_ms = max(a.last_evidence_ms, t)
            continue
        g_text = f", impact {g:.1f} g" if g is not None else ""
        reason = f"fall detected, confidence {c:.2f} >= {rule.min_confidence:g}{g_text}"
        numbers = (float(c), rule.min_confidence, float(g) if g is not None else math.nan)
        _raise(state, out, policy, now, patient, "fall", "", t, t, rule.severity, rule.repeat_ms, numbers, reason)


def _note_sources(state: AlertState, readings: pa.Table) -> None:
    """Each patient's Kafka partition per sensor (a keyed stream keeps a patient on one partition)."""
    if len(readings) == 0:
        return
    for stream in SILENT_STREAMS:
        rows = readings.filter(pc.equal(readings.column("stream"), stream))
        if len(rows):
            idx = state.index(rows.column("patient_id"))
            enc = pc.dictionary_encode(rows.column("source")).combine_chunks()  # a few partitions: no str per row
            names = np.asarray(enc.dictionary.to_pylist(), dtype=object)
            state.sources(stream)[idx] = names[np.asarray(enc.indices, dtype=np.int64)]


def _window_step(
    state: AlertState,
    policy: AlertPolicy,
    scores: pa.Table,
    windows: pa.Table,
    end_ms: int,
    source_high_ms: dict[str, int],
    now: datetime,
    out: Events,
) -> None:
    """The windows that end at `end_ms` (one per patient), for every patient tracked."""
    idx = state.index(scores.column("patient_id"))
    patients = scores.column("patient_id").to_pylist()
    for rule in policy.rules:
        v = _floats(scores if rule.column in scores.column_names else windows, rule.column)
        known = ~np.isnan(v)
        hit = known & ((v >= rule.raise_at) if rule.above else (v < rule.raise_at))
        clear = known & ((v < rule.clear_at) if rule.above else (v >= rule.clear_at))
        streak = state.streaks(rule.condition)
        run = np.where(hit, streak[idx] + 1, np.where(known, 0, streak[idx])).astype(np.int32)
        streak[idx] = run
        is_open = state.opened(rule.condition)[idx]
        starting = np.flatnonzero(hit & (run >= rule.windows) & ~is_open)
        ending = np.flatnonzero(clear & is_open)
        if not len(starting) and not len(ending):
            continue
        evidence = _evidence(rule, scores, windows)
        for i in starting.tolist():  # transitions only: few per window
            reason = _reason(rule, v[i], int(run[i]), evidence[i])
            numbers = (float(v[i]), rule.raise_at, float(evidence[i]))
            _raise(state, out, policy, now, patients[i], rule.condition, "", end_ms, end_ms, rule.severity,
                   rule.repeat_ms, numbers, reason, end_ms)  # fmt: skip
        for i in ending.tolist():
            a = state.open[(patients[i], rule.condition, "")]
            op = "<" if rule.above else ">="
            reason = f"{_label(rule)} {_fmt(v[i])} {op} {rule.clear_at:g} (clear level)"
            _resolve(state, out, a, end_ms, now, reason, policy, end_ms, float(v[i]))
    _silence_step(state, policy, windows, idx, end_ms, source_high_ms, now, out)


def _silence_step(
    state: AlertState,
    policy: AlertPolicy,
    windows: pa.Table,
    idx: np.ndarray,
    end_ms: int,
    source_high_ms: dict[str, int],
    now: datetime,
    out: Events,
) -> None:
    rule = policy.silence
    if rule is None:
        return
    for stream, after_ms in rule.after_ms.items():
        column = f"{stream}_present"
        if column not in windows.column_names:
            continue
        present = np.asarray(pc.fill_null(windows.column(column), False).to_numpy(zero_copy_only=False), dtype=bool)
        last, sources, gaps = state.last_seen(stream), state.sources(stream), state.recent_gaps(stream)
        is_open = state.opened("sensor_silent", stream)
        back = idx[present & is_open[idx]]
        for i in back.tolist():
            a = state.open[(state.patients[i].as_py(), "sensor_silent", stream)]
            silent_min = (end_ms - last[i]) / 60_000
            _resolve(state, out, a, end_ms, now, f"{stream} data again (silent about {silent_min:.0f} min)", policy,
                     end_ms, silent_min)  # fmt: skip
        rows = np.flatnonzero(present)
        seen = idx[rows]
        # the interval between readings this window shows: the time since the last window with data over the
        # readings in this one (a monitor at 1 Hz: about a second; hourly charting: an hour)
        prior = (last[seen] != NEVER) & (last[seen] < end_ms)
        if prior.any():
            again, count = seen[prior], _floats(windows, f"{stream}_count")[rows[prior]]
            gaps[again, 1:] = gaps[again, :-1]
            gaps[again, 0] = np.ceil((end_ms - last[again]) / np.fmax(np.nan_to_num(count, nan=1.0), 1.0))
        last[seen] = end_ms
        is_open[back] = False
        # Silence counts only where the patient's partition of this stream has data up to this window.
        names, code = np.unique(sources.astype(str), return_inverse=True)
        highs = np.asarray([source_high_ms.get(n, NEVER) for n in names.tolist()], dtype=np.int64)
        live = highs[code.reshape(-1)] >= end_ms if len(names) else np.zeros(len(last), dtype=bool)
        candidates = np.flatnonzero(
            (last != NEVER) & ~is_open & live & (end_ms - np.where(last == NEVER, end_ms, last) >= after_ms)
        )
        # A stream that reports less often than after_ms allows for (hourly charting, spot checks, a CGM every
        # 15 min, a wearable's 5-min averages) is silent after cadence_factor of its own usual intervals:
        # otherwise it would raise and resolve at every reading that comes a little late or not at all.
        if not len(candidates):
            continue
        usual = _usual_gap(gaps[candidates])
        wait = np.maximum(after_ms, np.ceil(usual * rule.cadence_factor)).astype(np.int64)
        silent = end_ms - last[candidates] >= wait
        for i, wait_ms, usual_ms in zip(
            candidates[silent].tolist(), wait[silent].tolist(), usual[silent].tolist(), strict=True
        ):
            patient, since = state.patients[i].as_py(), int(last[i])
            minutes = wait_ms / 60_000
            stamp = datetime.fromtimestamp(since / 1000, UTC).strftime("%H:%M")
            why = (
                f"{rule.cadence_factor:g}x its usual {usual_ms / 60_000:.0f} min between readings; "
                if wait_ms > after_ms
                else ""
            )
            reason = f"{stream} silent for >= {minutes:g} min ({why}last data in the window ending {stamp} UTC)"
            _raise(state, out, policy, now, patient, "sensor_silent", stream, since + wait_ms, since, rule.severity,
                   rule.repeat_ms, (minutes, minutes, math.nan), reason, end_ms)  # fmt: skip


def _usual_gap(gaps: np.ndarray) -> np.ndarray:
    """Per row, the median of the known (non-zero) intervals in ms; 0 where none is known. Sorting with the
    unknown ones last, not np.nanmedian: that takes a masked-array path costing ~150 us per call."""
    out = np.zeros(len(gaps))
    if not len(gaps):
        return out
    ordered = np.sort(np.where(gaps > 0, gaps, np.iinfo(np.int64).max), axis=1)
    known = (gaps > 0).sum(axis=1)
    rows = np.flatnonzero(known)
    lo = np.take_along_axis(ordered[rows], ((known[rows] - 1) // 2)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(ordered[rows], (known[rows] // 2)[:, None], axis=1)[:, 0]
    out[rows] = (lo + hi) / 2
    return out


def _floats(table: pa.Table, column: str) -> np.ndarray:
    if column not in table.column_names:
        return np.full(len(table), np.nan)
    return np.asarray(pc.cast(table.column(column), pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _evidence(rule: WindowRule, scores: pa.Table, windows: pa.Table) -> np.ndarray:
    if rule.evidence is None:
        return np.full(len(scores), np.nan)
    column = rule.evidence[0]
    return _floats(scores if column in scores.column_names else windows, column)


def _label(rule: WindowRule) -> str:
    return f"p({rule.condition})" if rule.column.startswith("p_") else rule.column


def _reason(rule: WindowRule, value: float, run: int, evidence: float) -> str:
    op = ">=" if rule.above else "<"
    text = f"{_label(rule)} {_fmt(value)} {op} {rule.raise_at:g}"
    if rule.windows > 1:
        text += f" for {run} windows"
    if rule.evidence is not None and not math.isnan(evidence):
        text += f"; {rule.evidence[1]} {evidence:.0f} {rule.evidence[2]}"
    return text


def _fmt(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}"


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


# --- the wire ----------------------------------------------------------------------------------------


def to_json_rows(table: pa.Table) -> list[bytes]:
    """Each row as a JSON object: timestamps as ISO-8601 UTC with milliseconds, NaN and infinities as null
    (orjson writes them so)."""
    values = []
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            ms = col.cast(pa.timestamp("ms", tz="UTC"))  # %S then carries the milliseconds
            col = pc.strftime(ms, format="%Y-%m-%dT%H:%M:%SZ", locale="C")
        values.append(col.to_pylist())
    names = table.column_names
    return [orjson.dumps(dict(zip(names, row, strict=True))) for row in zip(*values, strict=True)]
