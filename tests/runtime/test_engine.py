"""The whole per-batch composition without Kafka: accounting, outputs, state checkpoint and resume."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow.parquet as pq
from conftest import T0, LakeEngine, assert_same_lake, raw_batch

MIN = 60_000


def messages(minutes: range, patient: str = "P1") -> tuple[list[bytes | None], list[bytes | None], list[int]]:
    values: list[bytes | None] = []
    for m in minutes:
        for s in range(0, 60, 10):
            ts = T0 + m * MIN + s * 1000
            values.append(
                json.dumps({"patient_id": patient, "device_id": "hr", "ts": ts, "heart_rate_bpm": 70 + m % 7}).encode()
            )
    keys: list[bytes | None] = [patient.encode()] * len(values)
    kafka_ts = [T0 + m * MIN + s * 1000 for m in minutes for s in range(0, 60, 10)]
    return values, keys, kafka_ts


def engine(lake: Path, ckpt: Path) -> LakeEngine:
    return LakeEngine(lake, ckpt)


def test_accounting_outputs_and_resume(tmp_path: Path, tiny_checkpoint: Path) -> None:
    e = engine(tmp_path, tiny_checkpoint)
    v, k, ts = messages(range(0, 30))
    v[3] = b"{broken"
    v[4] = v[5]  # exact duplicate
    v[7] = json.dumps({"patient_id": "P1", "device_id": "hr", "ts": T0, "heart_rate_bpm": 900}).encode()
    batch = raw_batch("heart_rate", v, k, ts)
    out = e.process([batch])
    e.write(out)
    c = out.counts
    assert c.quarantined == {"invalid_json": 1, "heart_rate_out_of_range": 1}
    assert c.duplicates == 1
    assert c.consumed == c.windowed + c.duplicates + c.quarantined_total + out.pending_after - out.pending_before
    assert len(out.risk_scores) == len(out.windows) > 0
    q = pq.read_table(tmp_path / "quarantine").to_pylist()
    assert {r["reason"] for r in q} == {"invalid_json", "heart_rate_out_of_range"}
    assert next(r for r in q if r["reason"] == "invalid_json")["value"] == b"{broken"

    # A new engine resumes from the checkpoint: open windows, watermark and offsets carry over.
    e2 = engine(tmp_path, tiny_checkpoint)
    assert e2.pending == e.pending > 0
    assert e2.state.watermark_ms == e.state.watermark_ms
    assert e2.offsets == {"vitals.heart_rate:0": len(v)}
    late_v, late_k, late_ts = messages(range(0, 1))
    out2 = e2.process([raw_batch("heart_rate", late_v, late_k, late_ts)], drain=True)
    assert out2.counts.quarantined == {"late": len(late_v)}
    assert e2.pending == 0
    scores = pq.read_table(tmp_path / "risk_scores")
    assert {
        "patient_id",
        "window_start",
        "window_end",
        "risk_score",
        "risk_level",
        "model_version",
        "scored_at",
    } <= set(scores.column_names)


def test_scores_use_the_patients_previous_windows_as_context(tmp_path: Path, tiny_checkpoint: Path) -> None:
    e = engine(tmp_path, tiny_checkpoint)
    v, k, ts = messages(range(0, 40))
    out = e.process([raw_batch("heart_rate", v, k, ts)], drain=True)
    ctx = out.risk_scores.column("context_windows").to_pylist()
    assert ctx[0] == 1 and max(ctx) == e.scorer.length


def _sim_batches(messages: list, cuts: list[int]) -> list[list]:
    """RawBatches (one per topic, partition 0, offsets counted per topic) for message ranges between cuts."""
    import numpy as np

    from pipeline.batch import RawBatch

    offsets: dict[str, int] = {}
    position = []
    for m in messages:
        position.append(offsets.get(m.stream, 0))
        offsets[m.stream] = position[-1] + 1
    out = []
    for lo, hi in itertools.pairwise(cuts):
        by: dict[str, list[int]] = {}
        for i in range(lo, hi):
            by.setdefault(messages[i].stream, []).append(i)
        out.append(
            [
                RawBatch(
                    stream=s,
                    topic=f"vitals.{s}",
                    keys=[messages[i].key for i in idx],
                    values=[messages[i].value for i in idx],
                    partitions=np.zeros(len(idx), np.int32),
                    offsets=np.array([position[i] for i in idx], np.int64),
                    timestamps_ms=np.array([messages[i].timestamp_ms for i in idx], np.int64),
                )
                for s, idx in by.items()
            ]
        )
    return out


def test_a_crash_between_the_files_and_the_checkpoint_doubles_nothing(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """Batch k+1's files are written, then the process dies before its checkpoint. The restart reads from
    the checkpoint's offsets in differently sized batches; the lake must equal that of an uninterrupted run."""
    from sim.simulate import SimulationConfig, encode, simulate

    sim = simulate(SimulationConfig(patients=6, hours=0.5, seed=5, out_of_order_rate=0.0, very_late_rate=0.0))
    msgs = [m for chunk in encode(sim) for m in chunk]
    n = len(msgs)

    clean = engine(tmp_path / "clean", tiny_checkpoint)
    for batch in _sim_batches(msgs, [*range(0, n, 900), n]):
        clean.write(clean.process(batch))
    clean.write(clean.process([], drain=True))

    lake = tmp_path / "crash"
    first = engine(lake, tiny_checkpoint)
    k = 3 * 900
    for batch in _sim_batches(msgs, [0, 900, 1800, k]):
        first.write(first.process(batch))
    (doomed,) = _sim_batches(msgs, [k, k + 900])
    out = first.process(doomed)
    first.lake.write_batch(out.seq, out.datasets())  # the files land ...
    assert list(lake.glob(f"*/date=*/part-{first.lake.tag}-000000004.parquet"))
    del first  # ... and the process dies before its checkpoint

    second = engine(lake, tiny_checkpoint)
    assert second.seq == 3 and not list(lake.glob(f"*/date=*/part-{second.lake.tag}-000000004.parquet"))
    for batch in _sim_batches(msgs, [k, *range(k + 1300, n, 1300), n]):
        second.write(second.process(batch))
    second.write(second.process([], drain=True))

    assert_same_lake(lake, tmp_path / "clean")
    assert second.totals.consumed == clean.totals.consumed == n


def test_batches_decoded_ahead_by_the_consumer_process_give_the_same_lake(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    """The consumer process decodes each batch before sending it (pipeline.consumer_process.decode_ahead); the
    engine uses those tables instead of decoding, and the lake is the same, quarantine included."""
    import pickle

    from conftest import micro_batches_of_a_day_boundary, run_engine

    from pipeline.consumer_process import decode_ahead

    plain = micro_batches_of_a_day_boundary()
    plain.append([raw_batch("heart_rate", [b'{"patient_id": "P1"', b"", b"[1]"], partition=5)])  # rejected
    ahead = [pickle.loads(pickle.dumps(decode_ahead(pickle.loads(pickle.dumps(raw))))) for raw in plain]  # the pipe
    assert all(b.decoded is not None for raw in ahead for b in raw)
    assert all(b.decoded is None for raw in plain for b in raw)
    a = run_engine(tmp_path / "a", tiny_checkpoint, plain)
    b = run_engine(tmp_path / "b", tiny_checkpoint, ahead)
    assert a.totals.as_dict() == b.totals.as_dict() and a.totals.quarantined_total >= 3
    assert_same_lake(tmp_path / "a", tmp_path / "b")
