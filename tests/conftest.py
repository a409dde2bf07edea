from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from pipeline.decode import RawBatch

T0 = 1_795_305_600_000  # 2026-11-22T00:00:00Z, a window boundary for any window that divides a day


def raw_batch(
    stream: str,
    values: list[bytes | None],
    keys: list[bytes | None] | None = None,
    kafka_ts: int | list[int] = T0,
    partition: int = 0,
) -> RawBatch:
    n = len(values)
    ts = np.full(n, kafka_ts, dtype=np.int64) if isinstance(kafka_ts, int) else np.asarray(kafka_ts, dtype=np.int64)
    return RawBatch(
        stream=stream,
        topic=f"vitals.{stream}",
        keys=keys if keys is not None else [b"P1"] * n,
        values=values,
        partitions=np.full(n, partition, dtype=np.int32),
        offsets=np.arange(n, dtype=np.int64),
        timestamps_ms=ts,
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained network with the shipped architecture, for plumbing tests that must not depend on
    the trained weights."""
    import torch

    from models.lstm import Checkpoint, LSTMConfig, RiskLSTM
    from pipeline.score import MODEL_FEATURES

    torch.manual_seed(0)
    cfg = LSTMConfig(n_features=len(MODEL_FEATURES), hidden=8, layers=1, window_count=4)
    ckpt = Checkpoint(
        cfg,
        RiskLSTM(cfg).state_dict(),
        list(MODEL_FEATURES),
        [0.0] * len(MODEL_FEATURES),
        [1.0] * len(MODEL_FEATURES),
        [1.0] * len(cfg.heads),
        version="test-untrained",
    )
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    ckpt.save(path)
    return path
