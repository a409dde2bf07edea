"""Scoring closed windows: each patient's last L windows -> a [N, L, F] tensor -> the LSTM -> risk.

Context comes from `history` (recent windows of each patient, kept in the flow's state) plus the windows
just closed. Sequences are gathered with a sorted-key lookup, so there is no loop per patient or window.
A window with no data in the context (a gap) is all zeros, presence flags included.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from models.lstm import CONDITIONS, Checkpoint
from pipeline.features import VITALS

MODEL_FEATURES: list[str] = [
    *(f"{prefix}_{s}" for prefix in VITALS.values() for s in ("mean", "min", "max", "last", "slope_per_min")),
    *(f"{stream}_present" for stream in VITALS),
    "glucose_censored_count",
    "fall_count",
    "fall_confidence_max",
    "fall_present",
]


HISTORY_SCHEMA = pa.schema(
    [("patient_id", pa.string()), ("window_start", pa.timestamp("ms", tz="UTC"))]
    + [(f, pa.float64()) for f in MODEL_FEATURES]
)


def model_inputs(windows: pa.Table) -> pa.Table:
    """The columns the model reads, as floats: what the flow keeps per patient as scoring context."""
    return windows.select(HISTORY_SCHEMA.names).cast(HISTORY_SCHEMA)


@dataclass(frozen=True)
class RiskLevels:
    """Calibrated probability cut-offs for `risk_level`."""

    medium: float = 0.2
    high: float = 0.5

    def label(self, p: np.ndarray) -> pa.Array:
        level = np.where(p >= self.high, "high", np.where(p >= self.medium, "medium", "low"))
        return pa.array(level, pa.string())


def feature_matrix(windows: pa.Table, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """[N, F] float32: normalised features; missing values (absent stream, single reading slope) -> 0."""
    cols = []
    for name in MODEL_FEATURES:
        col = windows.column(name)
        arr = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        cols.append(arr)
    x = (np.stack(cols, axis=1) - center) / scale
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def sequences(
    context: pa.Table, context_x: np.ndarray, targets: pa.Table, window_ms: int, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each target window, the features of the same patient's windows at lags L-1..0 from `context`
    (which must contain the targets). Returns ([N, L, F] float32, windows-present count per target)."""
    ids = pa.concat_arrays(
        [context.column("patient_id").combine_chunks(), targets.column("patient_id").combine_chunks()]
    )
    codes = np.asarray(pc.dictionary_encode(ids).indices, dtype=np.int64)
    c_code, t_code = codes[: len(context)], codes[len(context) :]
    c_idx = _ms(context.column("window_start")) // window_ms
    t_idx = _ms(targets.column("window_start")) // window_ms
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


class Scorer:
    """Wraps a checkpoint for batch inference on CPU."""

    def __init__(self, checkpoint: Checkpoint, levels: RiskLevels | None = None, batch_size: int = 2048) -> None:
        if checkpoint.feature_names != MODEL_FEATURES:
            raise ValueError("checkpoint was trained on a different feature set; retrain it (vitalstream train)")
        self.checkpoint = checkpoint
        self.net = checkpoint.model()
        self.center = np.asarray(checkpoint.center, dtype=np.float64)
        self.scale = np.asarray(checkpoint.scale, dtype=np.float64)
        self.temperature = torch.tensor(checkpoint.temperature, dtype=torch.float32)
        self.levels = levels or RiskLevels()
        self.batch_size = batch_size
        self.length = checkpoint.config.window_count

    @torch.inference_mode()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """[N, L, F] -> calibrated probabilities [N, heads]."""
        out = []
        for start in range(0, len(x), self.batch_size):
            logits = self.net(torch.from_numpy(x[start : start + self.batch_size]))
            out.append(torch.sigmoid(logits / self.temperature).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.checkpoint.config.heads)), np.float32)

    def score(self, history: pa.Table, closed: pa.Table, window_ms: int) -> tuple[pa.Table, pa.Table]:
        """Score `closed` windows with context from `history`; returns (risk_scores, new history)."""
        context = pa.concat_tables([history.cast(HISTORY_SCHEMA), model_inputs(closed)])
        ctx_x = feature_matrix(context, self.center, self.scale)
        x, present = sequences(context, ctx_x, closed, window_ms, self.length)
        p = self.predict(x)
        heads = self.checkpoint.config.heads
        scores = {
            "patient_id": closed.column("patient_id"),
            "window_start": closed.column("window_start"),
            "window_end": closed.column("window_end"),
            "risk_score": pa.array(p[:, heads.index("any")].astype(np.float64)),
            "risk_level": self.levels.label(p[:, heads.index("any")]),
        }
        for cond in CONDITIONS:
            scores[f"p_{cond}"] = pa.array(p[:, heads.index(cond)].astype(np.float64))
        scores["context_windows"] = pa.array(present, pa.int32())
        scores["model_version"] = pa.array([self.checkpoint.version] * len(closed), pa.string())
        now = datetime.now(UTC).replace(microsecond=0)
        scores["scored_at"] = pa.array([now] * len(closed), pa.timestamp("ms", tz="UTC"))
        return pa.table(scores), prune_history(context, window_ms, self.length)


def prune_history(context: pa.Table, window_ms: int, length: int) -> pa.Table:
    """Keep, per patient, only windows that can still be context: within L-1 windows of their latest."""
    if len(context) == 0:
        return context
    start = _ms(context.column("window_start"))
    codes = np.asarray(pc.dictionary_encode(context.column("patient_id")).combine_chunks().indices, dtype=np.int64)
    latest = np.full(codes.max() + 1, np.iinfo(np.int64).min)
    np.maximum.at(latest, codes, start)
    keep = start > latest[codes] - length * window_ms
    return context.filter(pa.array(keep))


def _ms(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(col.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
