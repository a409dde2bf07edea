"""What the risk model reads and answers, without the model: the one home of these facts.

- `MODEL_FEATURES`: the columns of the `windows` dataset the network reads per window, in order;
- `CONDITIONS` (and `HEADS`, the overall risk "any" first): what it assesses, one probability each;
- `RiskLevels`: the calibrated-probability cut-offs that turn the overall risk into `risk_level`;
- `ModelContract`: the above plus window length and context length, as a checkpoint records them; the
  scorer refuses a checkpoint whose contract differs from the pipeline's (`ModelContract.mismatch`).

Plain Python and NumPy: the settings, the simulator and the reports read these without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.features import STATS, VITALS

CONDITIONS: tuple[str, ...] = ("hypoglycaemia", "hyperglycaemia", "cardiac", "respiratory", "fall")
HEADS: tuple[str, ...] = ("any", *CONDITIONS)

# The model's inputs per window, in order (columns of the `windows` dataset).
MODEL_FEATURES: list[str] = [
    *(f"{prefix}_{s}" for prefix in VITALS.values() for s in STATS),
    *(f"{stream}_present" for stream in VITALS),
    "glucose_censored_count",
    "fall_count",
    "fall_confidence_max",
    "fall_present",
]


@dataclass(frozen=True)
class ModelContract:
    """The inputs a network was trained on and the outputs it gives, as stored in its checkpoint."""

    features: tuple[str, ...]
    conditions: tuple[str, ...]
    window_ms: int  # length of the windows it was trained on
    context_windows: int  # L: windows of context per score

    def mismatch(self, window_ms: int) -> str | None:
        """Why this checkpoint cannot score the pipeline's windows of `window_ms`, or None when it can."""
        if list(self.features) != MODEL_FEATURES:
            return "checkpoint was trained on a different feature set; retrain it (vitalstream train)"
        if tuple(self.conditions) != CONDITIONS:
            return f"checkpoint assesses {', '.join(self.conditions)}, not {', '.join(CONDITIONS)}; retrain it"
        if self.window_ms != window_ms:
            return (
                f"checkpoint was trained on {self.window_ms / 60_000:g}-minute windows but window_minutes is "
                f"{window_ms / 60_000:g}; set window_minutes={self.window_ms / 60_000:g} or retrain the model"
            )
        return None


@dataclass(frozen=True)
class RiskLevels:
    """Calibrated probability cut-offs for `risk_level`."""

    medium: float = 0.2
    high: float = 0.5

    def label(self, p: np.ndarray) -> pa.Array:
        level = np.where(p >= self.high, "high", np.where(p >= self.medium, "medium", "low"))
        return pa.array(level, pa.string())
