"""Scoring closed windows: each patient's last L windows -> a [N, L, F] tensor -> the LSTM -> risk.

Context comes from `history` (recent windows of each patient, kept in the flow's state) plus the windows
just closed. Sequences are gathered with a sorted-key lookup, so there is no loop per patient or window.
A window with no data in the context (a gap) is all zeros, presence flags included.

Sensor configurations: a condition whose stream (`CONDITION_STREAMS`) has no reading in the patient's
context is not assessed: its probability is null, and the overall risk combines only the assessed
conditions. When nothing can be assessed, or the context holds too few readings (`RiskLevels`), the risk
is null and `risk_level` is `insufficient_data`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.features import VITALS
from pipeline.model_contract import (
    CONDITION_STREAMS,
    CONDITIONS,
    LOG_FEATURES,
    MODEL_FEATURES,
    RECENT_FEATURES,
    RECENT_HOURS,
    RECENT_RANGES,
    WINDOW_FEATURES,
    RiskLevels,
    sensor_configuration,
)
from pipeline.readings import epoch_ms, shared_codes

if TYPE_CHECKING:  # torch is imported when a network runs, not with this module (runtime imports it)
    from models.lstm import Checkpoint

ENGINES: tuple[str, ...] = ("torch", "onnx")  # PyTorch in the cloud; onnxruntime as on an edge device
# The vitals the network forecasts, in the order of its forecast outputs (models.lstm's forecast_pairs).
FORECAST_VITALS: dict[str, str] = dict(VITALS)
__all__ = [
    "COURSE_SCHEMA",
    "ENGINES",
    "HISTORY_SCHEMA",
    "Scorer",
    "assessment",
    "conform_history",
    "course_rows",
    "course_windows",
    "feature_matrix",
    "prune_history",
    "recent_shares",
    "sequences",
]
# Per stream, the model input that counts its readings in a window (falls: detections are events, so a
# window with any fall-stream message counts as one reading).
_READINGS_OF: dict[str, str] = {**{s: f"{s}_count" for s in VITALS}, "fall": "fall_present"}


HISTORY_SCHEMA = pa.schema(
    [("patient_id", pa.string()), ("window_start", pa.timestamp("ms", tz="UTC"))]
    + [(f, pa.float64()) for f in MODEL_FEATURES]
)


# The patient's recent course as kept between batches: per window, bits saying which vitals it holds and
# which of RECENT_RANGES they left (`course_rows`); 6 hours of it, a few bytes per window, where the full
# model inputs are kept for the last L windows only (HISTORY_SCHEMA).
COURSE_SCHEMA = pa.schema(
    [("patient_id", pa.string()), ("window_start", pa.timestamp("ms", tz="UTC")), ("recent_course", pa.int16())]
)
_COURSE_STREAMS = list(dict.fromkeys(stream for stream, _, _ in RECENT_RANGES.values()))
_HELD_BIT = {stream: i for i, stream in enumerate(_COURSE_STREAMS)}
_LEFT_BIT = {name: len(_COURSE_STREAMS) + j for j, name in enumerate(RECENT_FEATURES)}


def course_rows(windows: pa.Table) -> pa.Table:
    """COURSE_SCHEMA rows of windows (or model-input rows): which vitals each holds and which ranges they left
    (the window's min or max; its one reading where it has one)."""
    bits = np.zeros(len(windows), np.int16)
    for stream in _COURSE_STREAMS:
        prefix = VITALS[stream]
        last = _floats(windows, f"{prefix}_last")
        low, high = (_floats(windows, f"{prefix}_{stat}") for stat in ("min", "max"))
        low, high = np.where(np.isnan(low), last, low), np.where(np.isnan(high), last, high)
        held = ~np.isnan(last)
        bits |= held.astype(np.int16) << _HELD_BIT[stream]
        for name, (of, lo_ok, hi_ok) in RECENT_RANGES.items():
            if of == stream:
                with np.errstate(invalid="ignore"):
                    left = held & ((low < lo_ok) | (high > hi_ok))
                bits |= left.astype(np.int16) << _LEFT_BIT[name]
    cols = [windows.column("patient_id"), windows.column("window_start"), pa.array(bits, pa.int16())]
    return pa.Table.from_arrays(cols, schema=COURSE_SCHEMA)


def conform_history(history: pa.Table) -> pa.Table:
    """A scoring context saved by an earlier version, as HISTORY_SCHEMA: inputs it lacks are missing (null)
    for the hour it covers, inputs the model no longer reads are dropped."""
    n = len(history)
    have = set(history.column_names)
    cols = [history.column(f.name).cast(f.type) if f.name in have else pa.nulls(n, f.type) for f in HISTORY_SCHEMA]
    return pa.Table.from_arrays(cols, schema=HISTORY_SCHEMA)


def _floats(t: pa.Table, name: str) -> np.ndarray:
    return np.asarray(pc.cast(t.column(name), pa.float64()).to_numpy(zero_copy_only=False), np.float64)


def _patient_windows(
    context: pa.Table, targets: pa.Table, window_ms: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Patient codes shared by the context's and the targets' rows, and each row's window number:
    (context codes, target codes, context windows, target windows)."""
    c_code, t_code = shared_codes(context.column("patient_id"), targets.column("patient_id"))
    c_idx = epoch_ms(context.column("window_start")) // window_ms
    t_idx = epoch_ms(targets.column("window_start")) // window_ms
    return c_code, t_code, c_idx, t_idx


def recent_shares(course: pa.Table, targets: pa.Table, window_ms: int) -> dict[str, np.ndarray]:
    """Per RECENT_FEATURES name, [N]: for each target window, the share of the same patient's windows in
    `course` (COURSE_SCHEMA, holding the targets' own rows) starting in the last RECENT_HOURS up to the target
    that hold the vital and left its range (model_contract.RECENT_RANGES); NaN where none holds the vital.
    Prefix sums over the course sorted by (patient, window): no loop per patient or window."""
    n = len(targets)
    if n == 0:
        return {name: np.zeros(0) for name in RECENT_FEATURES}
    c_code, t_code, c_idx, t_idx = _patient_windows(course, targets, window_ms)
    back = RECENT_HOURS * 3_600_000 // window_ms  # windows before the target that still count
    base = int(min(c_idx.min(initial=0), t_idx.min(initial=0))) - back - 1
    span = int(max(c_idx.max(initial=0), t_idx.max(initial=0))) - base + 1
    order = np.argsort(c_code * span + (c_idx - base), kind="stable")
    key = (c_code * span + (c_idx - base))[order]
    hi = np.searchsorted(key, t_code * span + (t_idx - base), side="right")
    lo = np.searchsorted(key, t_code * span + (t_idx - base - back), side="right")
    bits = np.asarray(course.column("recent_course").to_numpy(zero_copy_only=False), np.int64)[order]

    def window_sums(bit: int) -> np.ndarray:
        cum = np.concatenate([[0], np.cumsum((bits >> bit) & 1)])
        return cum[hi] - cum[lo]

    out = {}
    held = {stream: window_sums(bit) for stream, bit in _HELD_BIT.items()}
    for name, (stream, _, _) in RECENT_RANGES.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.where(held[stream] > 0, window_sums(_LEFT_BIT[name]) / held[stream], np.nan)
    return out


def model_inputs(windows: pa.Table, course: pa.Table | None = None, window_ms: int = 300_000) -> pa.Table:
    """The columns the model reads, as floats (HISTORY_SCHEMA): the windows' own, and their patients' recent
    course (`recent_shares`) over `course` (COURSE_SCHEMA rows of the patients' recent windows, these
    included, as a live run keeps them; None: these windows' own `course_rows`). What the flow keeps per
    patient as scoring context."""
    own = windows.select([c for c in HISTORY_SCHEMA.names if c not in RECENT_FEATURES])
    own = own.cast(pa.schema([f for f in HISTORY_SCHEMA if f.name not in RECENT_FEATURES]))
    course = course_rows(own) if course is None else course.cast(COURSE_SCHEMA)
    for name, values in recent_shares(course, own, window_ms).items():
        own = own.append_column(name, pa.array(values, pa.float64(), from_pandas=True))
    return own.select(HISTORY_SCHEMA.names)


def feature_matrix(windows: pa.Table, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """[N, F] float32: normalised features (counts as log1p); missing values (absent stream, min/max/slope of
    a single reading) -> 0, which with the count and presence inputs the network can tell from a value.
    F = len(center): a checkpoint reads the first F of MODEL_FEATURES."""
    cols = []
    for name in MODEL_FEATURES[: len(center)]:
        col = windows.column(name)
        arr = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        cols.append(np.log1p(np.maximum(arr, 0.0)) if name in LOG_FEATURES else arr)
    x = (np.stack(cols, axis=1) - center) / scale
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def sequences(
    context: pa.Table, context_x: np.ndarray, targets: pa.Table, window_ms: int, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each target window, the features of the same patient's windows at lags L-1..0 from `context`
    (which must contain the targets). Returns ([N, L, F] float32, windows-present count per target)."""
    c_code, t_code, c_idx, t_idx = _patient_windows(context, targets, window_ms)
    span = int(max(c_idx.max(initial=0), t_idx.max(initial=0))) + length + 1
    c_key = c_code * span + c_idx
    order = np.argsort(c_key, kind="stable")
    sorted_key = c_key[order]
    out = np.zeros((len(targets), length, context_x.shape[1]), dtype=np.float32)
    found_count = np.zeros(len(targets), dtype=np.int32)
    for lag in range(length):
        want = t_code * span + (t_idx - lag)
        pos = np.clip(np.searchsorted(sorted_key, want), 0, max(len(sorted_key) - 1, 0))
        found = (sorted_key[pos] == want) if len(sorted_key) else np.zeros(len(want), bool)
        out[found, length - 1 - lag] = context_x[order[pos[found]]]
        found_count += found
    return out, found_count


def assessment(context: pa.Table, targets: pa.Table, window_ms: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Per target window: which conditions can be assessed ([N, conditions] bool: the condition's stream has
    a reading in the patient's last L windows) and how many readings the context holds in all ([N])."""
    streams = list(_READINGS_OF)
    counts = np.stack(
        [
            np.nan_to_num(
                np.asarray(
                    pc.cast(context.column(_READINGS_OF[s]), pa.float64()).to_numpy(zero_copy_only=False), np.float64
                )
            )
            for s in streams
        ],
        axis=1,
    ).astype(np.float32)
    seq, _ = sequences(context, counts, targets, window_ms, length)
    per_stream = seq.sum(axis=1)  # [N, streams]
    assessed = np.stack([per_stream[:, streams.index(CONDITION_STREAMS[c])] > 0 for c in CONDITIONS], axis=1)
    return assessed, per_stream.sum(axis=1)


class Scorer:
    """Wraps a checkpoint for batch inference on CPU, with PyTorch or onnxruntime computing the network
    and the same NumPy post-processing (calibration, intervals, anomalies) for both."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        levels: RiskLevels | None = None,
        batch_size: int = 2048,
        engine: str = "torch",
        onnx_path: Path | None = None,
        window_ms: int = 300_000,
        threads: int | None = None,
    ) -> None:
        problem = checkpoint.contract().mismatch(window_ms)
        if problem is not None:
            raise ValueError(problem)
        if len(checkpoint.config.forecast_pairs) != len(FORECAST_VITALS):
            raise ValueError("checkpoint has no forecast for every vital; retrain it (vitalstream train)")
        if engine not in ENGINES:
            raise ValueError(f"unknown scoring engine {engine!r}; choose one of {', '.join(ENGINES)}")
        self.checkpoint = checkpoint
        self.engine = engine
        self.net = checkpoint.model()
        self.session = onnx_session(checkpoint, onnx_path) if engine == "onnx" else None
        self.center = np.asarray(checkpoint.center, dtype=np.float64)
        self.scale = np.asarray(checkpoint.scale, dtype=np.float64)
        self.levels = levels or RiskLevels()
        self.batch_size = batch_size
        self.length = checkpoint.config.window_count
        self.window_ms = window_ms
        # windows of recent course to keep per patient (0: the checkpoint does not read it)
        self.course_windows = course_windows(checkpoint.config.n_features, window_ms)
        # PyTorch's intra-op threads for the network (None: PyTorch's default, one per core). Set in the
        # thread that runs the network: OpenMP keeps the setting per thread.
        self.threads = threads

    def network(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[N, L, F] -> raw network outputs (logits [N, heads], forecast [N, 2, 2K]), in chunks."""
        heads = len(self.checkpoint.config.heads)
        k2 = 2 * len(self.checkpoint.config.forecast_pairs)
        logits, forecast = [np.zeros((0, heads), np.float32)], [np.zeros((0, 2, k2), np.float32)]
        for start in range(0, len(x), self.batch_size):
            chunk = np.ascontiguousarray(x[start : start + self.batch_size])
            if self.session is not None:
                lo, fc = self.session.run(["logits", "forecast"], {"x": chunk})
            else:
                import torch

                if self.threads is not None and torch.get_num_threads() != self.threads:
                    torch.set_num_threads(self.threads)
                with torch.inference_mode():
                    lo_t, fc_t = self.net(torch.from_numpy(chunk))
                lo, fc = lo_t.numpy(), fc_t.numpy()
            logits.append(lo)
            forecast.append(fc)
        return np.concatenate(logits), np.concatenate(forecast)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """[N, L, F] -> calibrated probabilities [N, heads]."""
        return self.checkpoint.probabilities(self.network(x)[0])

    def score(self, history: pa.Table, closed: pa.Table, course: pa.Table | None = None) -> tuple[pa.Table, pa.Table]:
        """Score `closed` windows with context from `history` (HISTORY_SCHEMA: the patients' earlier windows)
        and `course` (COURSE_SCHEMA: their recent course, the closed windows' `course_rows` included, for a
        checkpoint that reads it; None: the closed windows' own); returns (risk_scores, the context: history
        and the closed windows' model inputs, to be pruned with `prune_history` and kept)."""
        history = history.cast(HISTORY_SCHEMA)
        context = pa.concat_tables([history, model_inputs(closed, course, self.window_ms)])
        ctx_x = feature_matrix(context, self.center, self.scale)
        x, present = sequences(context, ctx_x, closed, self.window_ms, self.length)
        assessed, readings = assessment(context, closed, self.window_ms, self.length)
        assessed &= (readings >= self.levels.min_context_readings)[:, None]  # too little history: nothing
        logits, forecast = self.network(x)
        keys = sensor_configuration(assessed, present, self.length)
        p = self.checkpoint.probabilities(logits, assessed, keys)
        heads = self.checkpoint.config.heads
        risk = p[:, heads.index("any")]
        scores = {
            "patient_id": closed.column("patient_id"),
            "window_start": closed.column("window_start"),
            "window_end": closed.column("window_end"),
            "risk_score": pa.array(risk, pa.float64(), from_pandas=True),  # NaN -> null
            "risk_level": self.levels.label(risk),
        }
        for cond in CONDITIONS:
            scores[f"p_{cond}"] = pa.array(p[:, heads.index(cond)], pa.float64(), from_pandas=True)
        mean, low, high = self.checkpoint.forecast_intervals(forecast[:, 1])
        for k, prefix in enumerate(FORECAST_VITALS.values()):
            unseen = x[:, :, self.checkpoint.config.forecast_pairs[k][1]].sum(axis=1) == 0  # no sensor: null
            scores[f"{prefix}_forecast"] = pa.array(mean[:, k], mask=unseen)
            scores[f"{prefix}_forecast_low"] = pa.array(low[:, k], mask=unseen)
            scores[f"{prefix}_forecast_high"] = pa.array(high[:, k], mask=unseen)
        scores["anomalies"] = self.anomalies(x, forecast[:, 0], closed)
        scores["context_windows"] = pa.array(present, pa.int32())
        scores["model_version"] = pa.array([self.checkpoint.version] * len(closed), pa.string())
        now = datetime.now(UTC).replace(microsecond=0)
        scores["scored_at"] = pa.array([now] * len(closed), pa.timestamp("ms", tz="UTC"))
        return pa.table(scores), context

    def anomalies(self, x: np.ndarray, forecast_now: np.ndarray, closed: pa.Table) -> pa.Array:
        """Streams whose observed window mean lies outside the interval forecast for this window from the
        windows before it ("" when none). Checked only where the stream was seen earlier in the context."""
        _mean, low, high = self.checkpoint.forecast_intervals(forecast_now)
        names = np.full(len(closed), "", dtype=object)
        for k, (stream, prefix) in enumerate(FORECAST_VITALS.items()):
            observed = np.asarray(
                pc.cast(closed.column(f"{prefix}_mean"), pa.float64()).to_numpy(zero_copy_only=False), np.float64
            )
            seen_before = x[:, :-1, self.checkpoint.config.forecast_pairs[k][1]].sum(axis=1) > 0
            outside = seen_before & ~np.isnan(observed) & ((observed < low[:, k]) | (observed > high[:, k]))
            names[outside] = np.where(names[outside] == "", stream, names[outside] + "," + stream)
        return pa.array(names.tolist(), pa.string())


def onnx_session(checkpoint: Checkpoint, path: Path | None = None) -> Any:
    """An onnxruntime session for the checkpoint's network: from `path` (written by `vitalstream
    export-onnx`) when it exists, else exported in memory. A file from another checkpoint is refused."""
    import onnxruntime as ort

    from models.export import export_onnx

    model = path.read_bytes() if path is not None and path.exists() else export_onnx(checkpoint)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # warnings about unused initialisers are noise here
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    digest = session.get_modelmeta().custom_metadata_map.get("checkpoint_digest", "")
    if digest != checkpoint.digest:
        raise ValueError(f"{path}: ONNX model was exported from another checkpoint; re-run `vitalstream export-onnx`")
    return session


def course_windows(n_features: int, window_ms: int) -> int:
    """Windows of recent course (COURSE_SCHEMA) to keep per patient for a network reading the first
    `n_features` of MODEL_FEATURES: RECENT_HOURS where it reads the recent course, else none."""
    return RECENT_HOURS * 3_600_000 // window_ms if n_features > len(WINDOW_FEATURES) else 0


def prune_history(
    context: pa.Table, window_ms: int, length: int, watermark_ms: int | None = None, schema: pa.Schema = HISTORY_SCHEMA
) -> pa.Table:
    """The windows that can still be context for a later score (HISTORY_SCHEMA, `length` L; or the recent
    course, COURSE_SCHEMA and `Scorer.course_windows`): per patient, within length-1 windows of the
    patient's latest; and, once there is a watermark, starting after watermark - (L+1) windows (a patient who
    went quiet is forgotten instead of kept in the state for ever)."""
    context = context.select(schema.names)
    if len(context) == 0:
        return context
    start = epoch_ms(context.column("window_start"))
    codes = np.asarray(pc.dictionary_encode(context.column("patient_id")).combine_chunks().indices, dtype=np.int64)
    latest = np.full(codes.max() + 1, np.iinfo(np.int64).min)
    np.maximum.at(latest, codes, start)
    keep = start > latest[codes] - length * window_ms
    if watermark_ms is not None:
        keep &= start > watermark_ms - (length + 1) * window_ms
    return context.filter(pa.array(keep))
