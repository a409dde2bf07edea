from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from pipeline.batch import RawBatch

if TYPE_CHECKING:
    from runtime.engine import BatchOutput, Engine, EngineConfig
from sim.broker import EmbeddedBroker

T0 = 1_795_305_600_000  # 2026-11-22T00:00:00Z, a window boundary for any window that divides a day


def canonical_readings(stream: str, times_min: list[float], values: list[float], patient: str = "P1") -> pa.Table:
    """Readings as the decoder emits them (one stream, minutes after T0), for event and label tests."""
    n = len(values)
    return pa.table(
        {
            "patient_id": [patient] * n,
            "device_id": ["d"] * n,
            "stream": [stream] * n,
            "event_time": pa.array([int(T0 + t * 60_000) for t in times_min], pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            ),
            "value": pa.array(values, pa.float64()),
            "fall_confidence": pa.nulls(n, pa.float64()),
            "impact_g": pa.nulls(n, pa.float64()),
            "censored": [False] * n,
        }
    )


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
    from pipeline.model_contract import MODEL_FEATURES

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


@pytest.fixture(scope="session")
def session_broker() -> Iterator[EmbeddedBroker]:
    """One embedded broker for the session's broker tests, each on its own topic prefix:
    stopping a broker that clients have talked to takes it about 5 s."""
    from pipeline.record_batches import warm_up

    warm_up()  # the record decoder's compiled loops, cached on disk before consumer processes need them
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def prefect_session() -> Iterator[None]:
    """One Prefect test server for the session's broker tests; starting one costs ~9 s."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def lake_rows(lake: Path) -> dict[str, list[tuple]]:
    """Every row of the three datasets, without wall-clock columns, sorted by their non-float values."""
    import pyarrow.dataset as ds

    volatile = {"scored_at", "quarantined_at"}
    out = {}
    for name in ("risk_scores", "windows", "quarantine"):
        t = ds.dataset(lake / name, format="parquet", partitioning="hive").to_table()
        t = t.select([c for c in t.column_names if c not in volatile])
        rows = [tuple(v if isinstance(v, float) else str(v) for v in r.values()) for r in t.to_pylist()]
        out[name] = sorted(rows, key=lambda r: tuple(v for v in r if isinstance(v, str)))
    return out


def assert_same_lake(a: Path, b: Path) -> None:
    """Equal datasets; floats to 1e-5 relative (sums over different batch splits, and the LSTM over
    different batch sizes, differ in the last bits)."""
    import math

    left, right = lake_rows(a), lake_rows(b)
    for name in left:
        assert len(left[name]) == len(right[name]), name
        for x, y in zip(left[name], right[name], strict=True):
            for u, v in zip(x, y, strict=True):
                if isinstance(u, float) and isinstance(v, float):
                    assert math.isclose(u, v, rel_tol=1e-5, abs_tol=1e-9) or (math.isnan(u) and math.isnan(v)), (x, y)
                else:
                    assert u == v, (name, x, y)


class LakeEngine:
    """An engine with its Parquet lake and state checkpoint, resumed and persisted as runtime.loop does (steps
    4 and 5 of the batch protocol), for tests that drive batches by hand. Attributes not defined here are the
    engine's (pending, state, offsets, seq, totals, scorer, quality)."""

    def __init__(self, lake: Path, checkpoint: Path | Any, name: str = "g", cfg: EngineConfig | None = None) -> None:
        from models.lstm import load_checkpoint
        from models.scorer import Scorer
        from pipeline.sink import ParquetLake
        from runtime.checkpoint import FileCheckpoints
        from runtime.engine import EngineConfig
        from runtime.loop import resume

        cfg = cfg or EngineConfig()
        scorer = checkpoint if isinstance(checkpoint, Scorer) else Scorer(load_checkpoint(checkpoint))
        self.lake = ParquetLake(lake, name)
        self.checkpoints = FileCheckpoints(lake, name, cfg.window)
        self.engine: Engine = resume(cfg, scorer, self.lake, self.checkpoints)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def write(self, out: BatchOutput) -> None:
        self.lake.write_batch(out.seq, out.datasets())
        self.checkpoints.save(self.engine.snapshot())

    def write_quality_sample(self, sample_id: str) -> dict[str, dict[str, Any]]:
        return self.engine.quality.write(lambda suite, t: self.lake.write_quality_sample(suite, sample_id, t))


def micro_batches_of_a_day_boundary(n_batches: int = 10) -> list[list[RawBatch]]:
    """Six simulated patients for 1.2 h starting 40 minutes before midnight UTC (so every dataset has two
    date partitions), as micro-batches of RawBatches with offsets counted per topic."""
    from sim.simulate import SimulationConfig, encode, simulate

    sim = SimulationConfig(patients=6, hours=1.2, seed=3, start_ms=T0 - 40 * 60_000, very_late_rate=0.0)
    messages = [m for chunk in encode(simulate(sim)) for m in chunk]
    offsets: dict[str, int] = {}
    out = []
    for part in np.array_split(np.arange(len(messages)), n_batches):
        by_stream: dict[str, list[int]] = {}
        for i in part.tolist():
            by_stream.setdefault(messages[i].stream, []).append(i)
        batch = []
        for stream, idx in by_stream.items():
            start = offsets.get(stream, 0)
            offsets[stream] = start + len(idx)
            batch.append(
                RawBatch(
                    stream=stream,
                    topic=f"vitals.{stream}",
                    keys=pa.array([messages[i].key for i in idx], pa.binary()),
                    values=pa.array([messages[i].value for i in idx], pa.binary()),
                    partitions=np.zeros(len(idx), dtype=np.int32),
                    offsets=np.arange(start, start + len(idx), dtype=np.int64),
                    timestamps_ms=np.asarray([messages[i].timestamp_ms for i in idx], dtype=np.int64),
                )
            )
        out.append(batch)
    return out


def run_engine(lake: Path, ckpt: Path, todo: list[list[RawBatch]], drain: bool = True) -> LakeEngine:
    """Every micro-batch of `todo` written and checkpointed in group g-1, then (`drain`) every window closed."""
    engine = LakeEngine(lake, ckpt, "g-1")
    for raw in todo:
        engine.write(engine.process(raw))
    if drain:
        engine.write(engine.process([], drain=True))
    return engine


def read_topic(bootstrap: str, topic: str, at_least: int = 0, timeout_s: float = 20.0) -> list[tuple[str, Any]]:
    """Every message of `topic` from the start, as (key, value JSON)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        while not (parts := consumer.partitions_for_topic(topic)) and time.monotonic() < deadline:
            time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in parts or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[tuple[str, Any]] = []
        idle = 0
        while time.monotonic() < deadline and (len(out) < at_least or idle < 3):
            got = consumer.poll(timeout_ms=500)
            idle = 0 if got else idle + 1
            out += [(r.key.decode(), json.loads(r.value)) for records in got.values() for r in records]
        return out
    finally:
        consumer.close()
