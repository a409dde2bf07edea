"""Where the shipped model lives: a home for the path that does not import PyTorch, so that a run can check
for its model at start-up and import torch only when a window is scored."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "risk_lstm.pt"
