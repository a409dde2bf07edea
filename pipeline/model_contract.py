"""What the risk model reads and answers, without the model: the one home of these facts.

- `MODEL_FEATURES`: what the network reads per window, in order: the window's own columns of the `windows`
  dataset (`WINDOW_FEATURES`), then the patient's recent course (`RECENT_FEATURES`);
- `CONDITIONS` (and `HEADS`, the overall risk "any" first): what it assesses, one probability each;
- `CONDITION_STREAMS`: the stream each condition needs; a condition whose stream has no reading in the
  patient's context is not assessed (null probability);
- `RiskLevels`: the calibrated-probability cut-offs that turn the overall risk into `risk_level`, and the
  rule for `insufficient_data`;
- `ModelContract`: the above plus window length and context length, as a checkpoint records them; the
  scorer refuses a checkpoint whose contract differs from the pipeline's (`ModelContract.mismatch`).

Plain Python and NumPy: the settings, the simulator and the reports read these without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.clinical import (
    GLUCOSE_LOW,
    GLUCOSE_VERY_HIGH,
    HEART_RATE_RED,
    NEWS2_PULSE,
    NEWS2_RESPIRATION,
    RESPIRATION_RED,
    normal_band,
)
from pipeline.features import STATS, VITALS

CONDITIONS: tuple[str, ...] = ("hypoglycaemia", "hyperglycaemia", "cardiac", "respiratory", "fall")
HEADS: tuple[str, ...] = ("any", *CONDITIONS)
# The stream a condition is assessed from: without it in the context the condition gets no probability.
CONDITION_STREAMS: dict[str, str] = {
    "hypoglycaemia": "glucose",
    "hyperglycaemia": "glucose",
    "cardiac": "heart_rate",
    "respiratory": "respiration",
    "fall": "fall",
}
# Model inputs given as log1p(value) before normalisation: reading counts span 1 (one averaged value per
# window) to hundreds (1 Hz monitors).
LOG_FEATURES: tuple[str, ...] = tuple(f"{stream}_count" for stream in VITALS)

# The window's own inputs, in order (columns of the `windows` dataset).
WINDOW_FEATURES: list[str] = [
    *(f"{prefix}_{s}" for prefix in VITALS.values() for s in STATS),
    *(f"{stream}_present" for stream in VITALS),
    *LOG_FEATURES,  # with min/max/slope null for one reading, the count tells the model why
    "glucose_censored_count",
    "fall_count",
    "fall_confidence_max",
    "fall_present",
]
# The patient's recent course, beyond the L windows of context: per window, the share of the patient's
# windows of the last RECENT_HOURS (this one included) that hold the vital and left its normal range
# [low, high] (the window's min or max; its one reading where it has one), or null where none holds it.
# Hourly ICU charting leaves one or two readings in an hour of context; a patient who has hovered at a
# threshold for hours differs from one who has just reached it. The ranges (pipeline.clinical) are the event
# thresholds (glucose < 70 and > 250; NEWS2's red heart and respiration rate, 3 points, which are the
# cardiac and respiratory event thresholds) and NEWS2's amber bands (1-2 points).
RECENT_HOURS = 6
_HR_NOT_RED = (HEART_RATE_RED[0] + 1, HEART_RATE_RED[1] - 1)  # the whole rates outside the red band
_RR_NOT_RED = (RESPIRATION_RED[0] + 1, RESPIRATION_RED[1] - 1)
RECENT_RANGES: dict[str, tuple[str, float, float]] = {
    "glucose_low_share": ("glucose", GLUCOSE_LOW, float("inf")),
    "glucose_high_share": ("glucose", float("-inf"), GLUCOSE_VERY_HIGH),
    "heart_rate_red_share": ("heart_rate", *_HR_NOT_RED),
    "heart_rate_amber_share": ("heart_rate", *normal_band(NEWS2_PULSE)),
    "respiration_red_share": ("respiration", *_RR_NOT_RED),
    "respiration_amber_share": ("respiration", *normal_band(NEWS2_RESPIRATION)),
}
RECENT_FEATURES: list[str] = list(RECENT_RANGES)
# The model's inputs per window, in order: a checkpoint reads a prefix of them (older checkpoints and
# `TrainConfig.recent_history` False: the window's own).
MODEL_FEATURES: list[str] = [*WINDOW_FEATURES, *RECENT_FEATURES]


@dataclass(frozen=True)
class ModelContract:
    """The inputs a network was trained on and the outputs it gives, as stored in its checkpoint."""

    features: tuple[str, ...]
    conditions: tuple[str, ...]
    window_ms: int  # length of the windows it was trained on
    context_windows: int  # L: windows of context per score

    def mismatch(self, window_ms: int) -> str | None:
        """Why this checkpoint cannot score the pipeline's windows of `window_ms`, or None when it can."""
        if list(self.features) not in (MODEL_FEATURES, WINDOW_FEATURES):
            return "checkpoint was trained on a different feature set; retrain it (vitalstream train)"
        if tuple(self.conditions) != CONDITIONS:
            return f"checkpoint assesses {', '.join(self.conditions)}, not {', '.join(CONDITIONS)}; retrain it"
        if self.window_ms != window_ms:
            return (
                f"checkpoint was trained on {self.window_ms / 60_000:g}-minute windows but window_minutes is "
                f"{window_ms / 60_000:g}; set window_minutes={self.window_ms / 60_000:g} or retrain the model"
            )
        return None


def sensor_configuration(
    assessed: np.ndarray, context_windows: np.ndarray | None = None, length: int | None = None
) -> np.ndarray:
    """[N, conditions] assessed flags -> per row the configuration key: the streams assessed, joined by "+"
    in `CONDITION_STREAMS` order ("" when none), e.g. "glucose+heart_rate"; with `context_windows` (windows
    holding data among the last `length`), "/sparse" is appended when fewer than half hold data (hourly
    charting, a 15-minute CGM, a record that has just begun): the cadence is part of the configuration."""
    a = np.asarray(assessed, dtype=bool).reshape(-1, len(CONDITIONS))
    streams = list(dict.fromkeys(CONDITION_STREAMS.values()))
    has = np.stack(
        [a[:, [i for i, c in enumerate(CONDITIONS) if CONDITION_STREAMS[c] == s]].any(axis=1) for s in streams], axis=1
    )
    keys = np.full(len(a), "", dtype=object)
    for j, s in enumerate(streams):
        keys[has[:, j]] = np.where(keys[has[:, j]] == "", s, keys[has[:, j]] + "+" + s)
    if context_windows is not None and length is not None:
        sparse = (np.asarray(context_windows) * 2 < length) & (keys != "")
        keys[sparse] = keys[sparse] + "/sparse"
    return keys


INSUFFICIENT = "insufficient_data"
LEVELS: tuple[str, ...] = ("low", "medium", "high", INSUFFICIENT)


@dataclass(frozen=True)
class RiskLevels:
    """Calibrated probability cut-offs for `risk_level`; a null risk (NaN) is `insufficient_data`.

    The scorer leaves the risk null when no condition can be assessed (none of their streams has a reading
    in the context) or when the context holds fewer than `min_context_readings` readings in all (a patient's
    very first reading, or one isolated reading after an hour of silence: nothing to compare it with)."""

    medium: float = 0.2
    high: float = 0.5
    min_context_readings: int = 2

    def label(self, p: np.ndarray) -> pa.Array:
        p = np.asarray(p, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            level = np.where(p >= self.high, "high", np.where(p >= self.medium, "medium", "low"))
        level = np.where(np.isnan(p), INSUFFICIENT, level)
        return pa.array(level, pa.string())
