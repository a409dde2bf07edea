"""The run loop with in-memory parts (no broker, no Prefect, no files): the batch protocol's order, a crash
between Parquet and the checkpoint, write retries and a broker that never comes back."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from models.lstm import load_checkpoint
from models.scorer import Scorer
from pipeline.alerts import AlertState
from pipeline.batch import RawBatch, lag_beyond
from pipeline.errors import BrokerUnavailable, LakeNotWritable
from runtime.engine import EngineConfig, EngineState
from runtime.loop import LoopConfig, resume, run
from sim.simulate import Message, SimulationConfig, encode, simulate

FAST = LoopConfig(mode="drain", max_idle_polls=1, write_retry_delays_s=(0.0, 0.0), outage_timeout_s=0.3)


class Crash(Exception):
    """The process dies here."""


class MemorySource:
    """Each topic as one partition of a list of messages; a poll hands over up to `per_poll` of each."""

    def __init__(self, messages: list[Message], per_poll: int, log: list[str], reachable: bool = True) -> None:
        self.by_topic: dict[str, list[Message]] = {}
        for m in messages:
            self.by_topic.setdefault(f"vitals.{m.stream}", []).append(m)
        self.per_poll, self.log, self._reachable = per_poll, log, reachable
        self.next: dict[str, int] = dict.fromkeys(self.by_topic, 0)
        self.committed: dict[str, int] = {}

    def resume_from(self, offsets: dict[str, int]) -> None:
        for key, offset in offsets.items():
            self.next[key.removesuffix(":0")] = offset

    def wait_for_assignment(self) -> set[str]:
        return {f"{t}:0" for t in self.by_topic}

    def poll_batch(self) -> list[RawBatch]:
        if not self._reachable:
            return []
        out = []
        for topic, msgs in self.by_topic.items():
            lo = self.next[topic]
            part = msgs[lo : lo + self.per_poll]
            if part:
                out.append(
                    RawBatch(
                        stream=topic.removeprefix("vitals."),
                        topic=topic,
                        keys=[m.key for m in part],
                        values=[m.value for m in part],
                        partitions=np.zeros(len(part), np.int32),
                        offsets=np.arange(lo, lo + len(part), dtype=np.int64),
                        timestamps_ms=np.array([m.timestamp_ms for m in part], np.int64),
                    )
                )
                self.next[topic] = lo + len(part)
        return out

    def lagging(self) -> set[str]:
        return {f"{t}:0" for t, msgs in self.by_topic.items() if self.next[t] < len(msgs)}

    def reachable(self) -> bool:
        return self._reachable

    def lag(self, offsets: dict[str, int]) -> dict[str, int]:
        return lag_beyond({f"{t}:0": len(msgs) for t, msgs in self.by_topic.items()}, offsets)

    def commit(self, offsets: dict[str, int]) -> None:
        self.log.append("commit")
        self.committed = dict(offsets)

    def close(self) -> None:
        pass


class MemoryDeadLetters:
    def __init__(self, log: list[str]) -> None:
        self.log, self.sent = log, []

    def send(self, table: pa.Table, timeout_s: float) -> int:
        self.log.append("dead letters")
        self.sent += [(r["topic"], r["offset"]) for r in table.select(["topic", "offset"]).to_pylist()]
        return len(table)

    def close(self) -> None:
        pass


class MemoryLake:
    def __init__(self, log: list[str], fail_writes: int = 0) -> None:
        self.log, self.fail_writes = log, fail_writes
        self.batches: dict[int, Mapping[str, pa.Table]] = {}
        self.samples: dict[tuple[str, str], pa.Table] = {}

    def write_batch(self, seq: int, datasets: Mapping[str, pa.Table]) -> list[int]:
        self.log.append("parquet")
        if self.fail_writes:
            self.fail_writes -= 1
            raise LakeNotWritable("cannot write lake/windows/x.parquet: No space left on device")
        self.batches[seq] = dict(datasets)  # same seq, same "file names": a rewrite replaces
        return [seq]

    def discard_after(self, seq: int) -> list[int]:
        gone = [s for s in self.batches if s > seq]
        for s in gone:
            del self.batches[s]
        return gone

    def write_quality_sample(self, suite: str, sample_id: str, table: pa.Table) -> str:
        self.samples[(suite, sample_id)] = table
        return f"memory:{suite}/{sample_id}"

    def rows(self, dataset: str) -> list[tuple]:
        volatile = {"scored_at", "quarantined_at", "emitted_at"}
        tables = [b[dataset] for _, b in sorted(self.batches.items())]
        t = pa.concat_tables(tables)
        t = t.select([c for c in t.column_names if c not in volatile])
        rows = [tuple(round(v, 6) if isinstance(v, float) else v for v in r.values()) for r in t.to_pylist()]
        return sorted(rows, key=repr)


class MemoryOutputs:
    """The live topics: every message ever published, duplicates included (at-least-once)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.risk: list[tuple] = []
        self.alerts: list[tuple] = []

    def publish(self, risk_scores: pa.Table, alerts: pa.Table, timeout_s: float) -> int:
        self.log.append("publish")
        self.risk += [
            (r["patient_id"], r["window_end"]) for r in risk_scores.select(["patient_id", "window_end"]).to_pylist()
        ]
        self.alerts += [(r["alert_id"], r["state"], r["sequence"]) for r in alerts.to_pylist()]
        return len(risk_scores) + len(alerts)

    def close(self) -> None:
        pass


class MemoryCheckpoints:
    def __init__(self, log: list[str], crash_on_save: int | None = None) -> None:
        self.log, self.crash_on_save = log, crash_on_save
        self.saved: EngineState | None = None
        self.saves = 0

    def load(self) -> EngineState | None:
        return self.saved

    def save(self, state: EngineState) -> None:
        self.saves += 1
        if self.saves == self.crash_on_save:
            raise Crash(f"killed before checkpoint {self.saves}")
        self.log.append("checkpoint")
        # what survives a crash is what was serialised: a copy, not the live engine's objects
        self.saved = EngineState(
            state.window.__class__(
                state.window.open,
                dict(state.window.source_high_ms),
                state.window.watermark_ms,
                _copy_dedupe(state.window.dedupe),
            ),
            state.history,
            dict(state.offsets),
            state.seq,
            state.totals.__class__.from_dict(state.totals.as_dict()),
            AlertState.from_tables(state.alerts.to_tables()),
            state.course,
        )


def _copy_dedupe(index: object) -> object:
    if index is None:
        return None
    from pipeline.window import DedupeIndex

    assert isinstance(index, DedupeIndex)
    return DedupeIndex.from_tables(index.window_ms, index.to_tables())


@pytest.fixture(scope="module")
def messages() -> list[Message]:
    sim = simulate(SimulationConfig(patients=6, hours=0.5, seed=5, out_of_order_rate=0.0, very_late_rate=0.0))
    return [m for chunk in encode(sim) for m in chunk]


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint: Path) -> Scorer:
    return Scorer(load_checkpoint(tiny_checkpoint))


def one_run(
    scorer: Scorer,
    source: MemorySource,
    lake: MemoryLake,
    checkpoints: MemoryCheckpoints,
    dead: MemoryDeadLetters,
    cfg: LoopConfig = FAST,
    outputs: MemoryOutputs | None = None,
) -> dict:
    return run(EngineConfig(), scorer, source, dead, lake, checkpoints, cfg, outputs=outputs).as_dict()


def test_each_batch_follows_the_protocol_and_the_run_balances(messages: list[Message], scorer: Scorer) -> None:
    log: list[str] = []
    source, lake, ckpt = MemorySource(messages, 300, log), MemoryLake(log), MemoryCheckpoints(log)
    dead, outputs = MemoryDeadLetters(log), MemoryOutputs(log)
    summary = one_run(scorer, source, lake, ckpt, dead, outputs=outputs)
    assert summary["balanced"] and summary["consumed"] == len(messages)
    # publishing comes after Parquet and before the checkpoint, in batches that scored or alerted
    steps = "dead letters, parquet, (publish, )?checkpoint, commit, "
    assert re.fullmatch(f"({steps}){{{summary['batches'] + 1}}}", ", ".join(log) + ", ")  # + the drain batch
    assert "publish" in log and len(outputs.risk) == summary["scored"] and len(set(outputs.risk)) == len(outputs.risk)
    assert source.committed == {f"{t}:0": len(m) for t, m in source.by_topic.items()}
    assert sum(summary["quarantined"].values()) == len(dead.sent) > 0  # the simulator sends malformed messages
    assert lake.samples  # a quality sample per suite, written at the end
    assert summary["lag"] == {f"{t}:0": 0 for t in source.by_topic}  # caught up: nothing beyond the checkpoint


def test_a_run_stopped_early_reports_the_messages_beyond_its_checkpoint_as_lag(
    messages: list[Message], scorer: Scorer
) -> None:
    log: list[str] = []
    source = MemorySource(messages, 300, log)
    cfg = LoopConfig(mode="follow", outage_timeout_s=FAST.outage_timeout_s)
    summary = run(
        EngineConfig(),
        scorer,
        source,
        MemoryDeadLetters(log),
        MemoryLake(log),
        MemoryCheckpoints(log),
        cfg,
        stop=lambda: "commit" in log,  # after the first batch
    )
    left = {f"{t}:0": len(m) - source.committed.get(f"{t}:0", 0) for t, m in source.by_topic.items()}
    assert summary.lag == left and sum(left.values()) > 0


def test_a_crash_between_parquet_and_the_checkpoint_replays_the_batch_and_doubles_nothing(
    messages: list[Message], scorer: Scorer
) -> None:
    log: list[str] = []
    clean_lake, clean_dead, clean_out = MemoryLake(log), MemoryDeadLetters(log), MemoryOutputs(log)
    one_run(scorer, MemorySource(messages, 300, log), clean_lake, MemoryCheckpoints(log), clean_dead, outputs=clean_out)

    lake, ckpt, dead = MemoryLake(log), MemoryCheckpoints(log, crash_on_save=4), MemoryDeadLetters(log)
    source, out = MemorySource(messages, 300, log), MemoryOutputs(log)
    with pytest.raises(Crash):
        one_run(scorer, source, lake, ckpt, dead, outputs=out)
    assert ckpt.saved is not None and ckpt.saved.seq == 3 and 4 in lake.batches  # batch 4's files, no checkpoint
    assert source.committed == ckpt.saved.offsets  # Kafka never got ahead of the checkpoint

    ckpt.crash_on_save = None
    engine = resume(EngineConfig(), scorer, lake, ckpt)  # what the restart does first
    assert engine.seq == 3 and 4 not in lake.batches  # the orphaned batch's files are gone
    # the restart reads from the checkpoint's offsets, in differently sized polls
    summary = one_run(scorer, MemorySource(messages, 410, log), lake, ckpt, dead, outputs=out)
    assert summary["balanced"]
    for dataset in ("risk_scores", "windows", "quarantine", "alerts"):
        assert lake.rows(dataset) == clean_lake.rows(dataset), dataset
    # the live topics: at-least-once, the same (alert_id, state, sequence) events and scored windows
    assert clean_out.alerts and set(out.alerts) == set(clean_out.alerts) and len(out.alerts) >= len(clean_out.alerts)
    assert set(out.risk) == set(clean_out.risk) and len(set(clean_out.risk)) == len(clean_out.risk)
    assert ckpt.saved is not None and ckpt.saved.totals.consumed == len(messages)
    # dead letters are at-least-once: every one of the clean run's, the replayed batch's twice at most
    assert set(dead.sent) == set(clean_dead.sent) and len(dead.sent) >= len(clean_dead.sent)


def test_a_failed_write_is_retried_and_written_once(messages: list[Message], scorer: Scorer) -> None:
    log: list[str] = []
    lake = MemoryLake(log, fail_writes=2)
    summary = one_run(scorer, MemorySource(messages, 10_000, log), lake, MemoryCheckpoints(log), MemoryDeadLetters(log))
    assert summary["balanced"]
    assert log[:6] == ["dead letters", "parquet", "parquet", "parquet", "checkpoint", "commit"]


def test_a_write_that_keeps_failing_stops_the_run_before_the_checkpoint(
    messages: list[Message], scorer: Scorer
) -> None:
    log: list[str] = []
    lake, ckpt = MemoryLake(log, fail_writes=3), MemoryCheckpoints(log)
    source = MemorySource(messages, 10_000, log)
    with pytest.raises(LakeNotWritable, match="No space left"):
        one_run(scorer, source, lake, ckpt, MemoryDeadLetters(log))
    assert "checkpoint" not in log and "commit" not in log and ckpt.saved is None


def test_a_broker_that_never_answers_ends_the_run_with_nothing_committed(
    messages: list[Message], scorer: Scorer, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    source = MemorySource(messages, 300, log, reachable=False)
    with caplog.at_level(logging.WARNING), pytest.raises(BrokerUnavailable, match="has not answered"):
        one_run(scorer, source, MemoryLake(log), MemoryCheckpoints(log), MemoryDeadLetters(log))
    assert log == [] and "not answering" in caplog.text
