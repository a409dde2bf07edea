"""A multivariate LSTM over a patient's last L windows of per-stream features and presence masks.

One file for the network, as in nanoGPT: a config dataclass, one module, a plain forward, and safe
checkpoint I/O (tensors and plain Python values only, loaded with `weights_only=True`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONDITIONS: tuple[str, ...] = ("hypoglycaemia", "hyperglycaemia", "cardiac", "respiratory", "fall")
HEADS: tuple[str, ...] = ("any", *CONDITIONS)
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "risk_lstm.pt"


@dataclass
class LSTMConfig:
    n_features: int = 22
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.1
    window_count: int = 12  # L: windows of context per score
    horizon_minutes: int = 60  # H: an event starting within H after window_end is a positive
    heads: tuple[str, ...] = HEADS


class RiskLSTM(nn.Module):
    def __init__(self, cfg: LSTMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lstm = nn.LSTM(
            cfg.n_features,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        self.head = nn.Linear(cfg.hidden, len(cfg.heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, L, n_features] -> logits [batch, heads]; the last step sees the whole context."""
        out, _ = self.lstm(x)
        logits: torch.Tensor = self.head(out[:, -1])
        return logits


@dataclass
class Checkpoint:
    """Everything needed to score: weights, the config, the feature order and normalisation, provenance."""

    config: LSTMConfig
    state_dict: dict[str, torch.Tensor]
    feature_names: list[str]
    center: list[float]
    scale: list[float]
    temperature: list[float] = field(default_factory=list)  # per head; calibration (1.0 = none)
    version: str = "untrained"
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def model(self) -> RiskLSTM:
        net = RiskLSTM(self.config)
        net.load_state_dict(self.state_dict)
        net.eval()
        return net

    def save(self, path: Path) -> None:
        doc = {k: v for k, v in asdict(self).items() if k not in ("config", "state_dict")}
        doc["config"] = asdict(self.config)
        doc["state_dict"] = self.state_dict
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(doc, tmp)
        tmp.replace(path)


def load_checkpoint(path: Path = DEFAULT_CHECKPOINT) -> Checkpoint:
    """Load without unpickling arbitrary objects: a tampered or foreign file raises ValueError."""
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError for unsafe or corrupt files
        raise ValueError(f"{path}: not a valid VitalStream checkpoint ({type(exc).__name__}: {exc})") from exc
    try:
        cfg = doc["config"]
        cfg["heads"] = tuple(cfg["heads"])
        ckpt = Checkpoint(
            config=LSTMConfig(**cfg),
            state_dict=doc["state_dict"],
            feature_names=list(doc["feature_names"]),
            center=list(doc["center"]),
            scale=list(doc["scale"]),
            temperature=list(doc.get("temperature") or [1.0] * len(cfg["heads"])),
            version=str(doc["version"]),
            metrics=dict(doc.get("metrics", {})),
            training=dict(doc.get("training", {})),
        )
        ckpt.model()  # shapes must match the config
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: checkpoint is incomplete or does not match its config ({exc})") from exc
    return ckpt
