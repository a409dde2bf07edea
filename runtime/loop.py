"""The run loop: micro-batches from a source, through the engine, into the lake, in the one order that keeps
the lake exact whatever happens.

At start (`resume`): load the state checkpoint and remove the lake's files of batches it does not include
(written by a run that crashed before checkpointing them); those batches are read again from the
checkpoint's offsets and written again under the same names.

Per batch (`run`, then `BatchProtocol.commit`):
  1. poll          the source hands over the next micro-batch and the partitions that still lag
  2. process       the engine decodes, validates, windows, scores and alerts: nothing is written yet
  3. dead letters  every quarantined message goes to the dead-letter topic, acknowledged by the broker:
                   a message is never in the lake's quarantine without being in the topic
  4. Parquet       the batch's risk_scores, windows, quarantine, alerts and acks files (retried: same
                   names, idempotent)
  5. publish       the risk scores and alert events to the live topics, acknowledged by the broker
  6. checkpoint    the engine's state (open alerts included) with the next offsets, atomically: from here
                   the batch is done
  7. commit        the offsets to Kafka (a convenience for lag tools; a restart resumes from step 6's)
A crash before 6 replays the batch: same files, its dead letters and live messages again with the same ids
(at-least-once: dead letters deduplicate on the `vitalstream.source` header, risk on (patient_id,
window_end), alerts on (alert_id, state, sequence)). A crash after 6 loses nothing and doubles nothing.

An empty poll is idleness or an outage: the source tells them apart (`reachable`). A broker that stopped
answering is waited for with backoff up to `outage_timeout_s`, then the run stops with BrokerUnavailable
having committed nothing it had not checkpointed, so a rerun resumes exactly.

Nothing here knows Kafka, Parquet or Prefect: the source, dead-letter sink, lake and checkpoint store are
the small protocols below (runtime.wiring plugs in the real ones; tests use in-memory ones).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pyarrow as pa

from models.scorer import Scorer
from pipeline.batch import RawBatch
from pipeline.errors import BrokerUnavailable, LakeNotWritable
from pipeline.memory import release_memory
from runtime.engine import BatchOutput, Engine, EngineConfig, EngineState, Totals

Mode = Literal["until-idle", "drain", "follow"]


class Source(Protocol):
    """Micro-batches of messages (pipeline.consumer_process.ConsumerProcess, pipeline.kafka_io.StreamConsumer)."""

    def resume_from(self, offsets: dict[str, int]) -> None: ...
    def wait_for_assignment(self) -> Collection[str]: ...
    def poll_batch(self) -> list[RawBatch]: ...
    def lagging(self) -> set[str]: ...
    def reachable(self) -> bool: ...
    def commit(self, offsets: dict[str, int]) -> Any: ...
    def lag(self, offsets: dict[str, int]) -> dict[str, int]: ...
    def close(self) -> None: ...


class DeadLetterSink(Protocol):
    """Where quarantined messages go with their original bytes (pipeline.kafka_publish.DeadLetters)."""

    def send(self, table: pa.Table, timeout_s: float) -> int: ...
    def close(self) -> None: ...


class LiveOutputs(Protocol):
    """Where each batch's risk scores and alert events go as they happen (pipeline.kafka_publish.LiveTopics)."""

    def publish(self, risk_scores: pa.Table, alerts: pa.Table, timeout_s: float) -> int: ...
    def close(self) -> None: ...


class Lake(Protocol):
    """Where a batch's tables and the quality samples go (pipeline.sink.ParquetLake)."""

    def write_batch(self, seq: int, datasets: Mapping[str, pa.Table]) -> Sequence[object]: ...
    def discard_after(self, seq: int) -> Sequence[object]: ...
    def write_quality_sample(self, suite: str, sample_id: str, table: pa.Table) -> str: ...


class CheckpointStore(Protocol):
    """Where the engine's state goes after each batch (runtime.checkpoint.FileCheckpoints)."""

    def load(self) -> EngineState | None: ...
    def save(self, state: EngineState) -> None: ...


@dataclass(frozen=True)
class LoopConfig:
    mode: Mode = "until-idle"
    max_idle_polls: int = 40  # until-idle/drain: empty polls with partitions still lagging before giving up
    outage_timeout_s: float = 120.0  # how long a broker that stopped answering is waited for
    write_retry_delays_s: tuple[float, ...] = (1.0, 4.0)  # a full disk or a network mount can recover
    sample_every_s: float = 300.0  # under follow, how often the quality sample is written


@dataclass
class RunSummary:
    run_id: str
    mode: str
    batches: int
    seconds: float
    run: Totals  # this run
    pending_before: int
    pending_after: int
    quality: dict[str, Any] = field(default_factory=dict)
    lake: str = ""
    outage_s: float = 0.0  # longest broker outage survived during the run
    offsets: dict[str, int] = field(default_factory=dict)  # next offset per partition, as checkpointed
    startup_s: float = 0.0  # of `seconds`, before the first poll: the consumer's start and the group join
    # Messages in Kafka beyond `offsets` when the run ended, per partition whose high-water mark the source saw
    lag: dict[str, int] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        """consumed = windowed + duplicates + quarantined + acks applied + change in readings waiting in open
        windows."""
        r = self.run
        return r.consumed == r.windowed + r.duplicates + r.quarantined_total + r.acks + (
            self.pending_after - self.pending_before
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "batches": self.batches,
            "seconds": round(self.seconds, 2),
            "startup_s": round(self.startup_s, 2),
            **self.run.as_dict(),
            "pending_before": self.pending_before,
            "pending_after": self.pending_after,
            "balanced": self.balanced,
            "quality": self.quality,
            "lake": self.lake,
            "outage_s": round(self.outage_s, 1),
            "lag": self.lag,
        }


def resume(cfg: EngineConfig, scorer: Scorer, lake: Lake, checkpoints: CheckpointStore) -> Engine:
    """The engine as the last checkpoint left it; files of batches after that checkpoint are removed."""
    saved = checkpoints.load()
    lake.discard_after(saved.seq if saved is not None else 0)
    return Engine(cfg, scorer, saved)


class BatchProtocol:
    """Steps 3-7 for one processed batch, in order. Each step starts only once the one before has succeeded."""

    def __init__(
        self,
        engine: Engine,
        source: Source,
        dead_letters: DeadLetterSink,
        lake: Lake,
        checkpoints: CheckpointStore,
        cfg: LoopConfig,
        outage: Outage,
        logger: Any,
        outputs: LiveOutputs | None = None,
    ) -> None:
        self.engine, self.source, self.dead_letters, self.outputs = engine, source, dead_letters, outputs
        self.lake, self.checkpoints, self.cfg, self.outage, self.logger = lake, checkpoints, cfg, outage, logger

    def commit(self, out: BatchOutput) -> None:
        # 3. dead letters, acknowledged (an outage can show up as a send that waits on the broker)
        sent_at = time.monotonic()
        self.dead_letters.send(out.dead_letters, self.cfg.outage_timeout_s)
        self.outage.waited_elsewhere(time.monotonic() - sent_at)
        # 4. Parquet, retried
        self._with_retries(f"writing batch {out.seq}", lambda: self.lake.write_batch(out.seq, out.datasets()))
        # 5. the live topics, acknowledged
        if self.outputs is not None and (len(out.risk_scores) or len(out.alerts)):
            sent_at = time.monotonic()
            self.outputs.publish(out.risk_scores, out.alerts, self.cfg.outage_timeout_s)
            self.outage.waited_elsewhere(time.monotonic() - sent_at)
        # 6. the state checkpoint, retried
        self._with_retries(f"checkpointing batch {out.seq}", lambda: self.checkpoints.save(self.engine.snapshot()))
        release_memory()  # hand the batch's freed memory back to the OS between batches
        # 7. offsets to Kafka
        self.source.commit(self.engine.offsets)

    def _with_retries(self, what: str, step: Callable[[], object]) -> None:
        """Writes are idempotent (same names for the same batch), so a failed one is simply tried again."""
        for attempt, delay in enumerate((*self.cfg.write_retry_delays_s, None)):
            try:
                step()
                return
            except (LakeNotWritable, OSError) as exc:  # the sink names the path in LakeNotWritable
                if delay is None:
                    raise
                self.logger.warning("%s failed (%s); retry %d in %.0f s", what, exc, attempt + 1, delay)
                time.sleep(delay)


def run(
    engine_cfg: EngineConfig,
    scorer: Scorer,
    source: Source,
    dead_letters: DeadLetterSink,
    lake: Lake,
    checkpoints: CheckpointStore,
    cfg: LoopConfig = LoopConfig(),
    logger: Any = None,
    on_batch: Callable[[BatchOutput], None] | None = None,
    names: tuple[str, str] = ("Kafka broker", ""),
    outputs: LiveOutputs | None = None,
    stop: Callable[[], bool] | None = None,
) -> RunSummary:
    """Consume until idle (or for ever under `follow`, until `stop()` says so), committing each batch by the
    protocol above. `names`: the broker and the lake as the logs and the summary name them; `outputs`: the
    live topics (none: the lake only)."""
    logger = logger or logging.getLogger(__name__)
    broker_name, lake_name = names
    engine = resume(engine_cfg, scorer, lake, checkpoints)
    outage = Outage(cfg.outage_timeout_s, logger, broker_name)
    protocol = BatchProtocol(engine, source, dead_letters, lake, checkpoints, cfg, outage, logger, outputs)
    run_id, started, sampled_at = new_id(), time.perf_counter(), time.monotonic()
    startup_s = 0.0
    lag: dict[str, int] = {}
    totals, batches, pending_before = Totals(), 0, engine.pending

    def write_quality_sample() -> dict[str, dict[str, Any]]:
        sample_id = new_id()
        return engine.quality.write(lambda suite, table: lake.write_quality_sample(suite, sample_id, table))

    try:
        source.resume_from(engine.offsets)
        source.wait_for_assignment()
        startup_s = time.perf_counter() - started
        idle_polls = 0
        while stop is None or not stop():
            raw = source.poll_batch()  # 1. poll
            lagging = source.lagging()
            if not raw:
                if not source.reachable():
                    outage.wait()  # an outage is not idleness: in until-idle mode it must not end the run
                    continue
                outage.over()
                idle_polls += 1
                if cfg.mode != "follow" and (not lagging or idle_polls >= cfg.max_idle_polls):
                    break
                continue
            outage.over()
            idle_polls = 0
            out = engine.process(raw, lagging=lagging)  # 2. process
            protocol.commit(out)  # 3-7
            totals.add(out.counts)
            batches += 1
            if on_batch is not None:
                on_batch(out)
            logger.debug("batch %d: %s", out.seq, out.counts.as_dict())
            if cfg.mode == "follow" and time.monotonic() - sampled_at > cfg.sample_every_s:
                write_quality_sample()  # a run that never ends still gets validated
                sampled_at = time.monotonic()
        if cfg.mode == "drain":  # finished recordings: close every open window
            out = engine.process([], drain=True)
            protocol.commit(out)
            totals.add(out.counts)
        quality = write_quality_sample()
        lag = source.lag(dict(engine.offsets))
    finally:
        source.close()
        dead_letters.close()
        if outputs is not None:
            outputs.close()
    summary = RunSummary(
        run_id,
        cfg.mode,
        batches,
        time.perf_counter() - started,
        totals,
        pending_before,
        engine.pending,
        quality,
        lake_name,
        outage.longest_s,
        dict(engine.offsets),
        startup_s,
        lag,
    )
    logger.info(
        "consumed %d, windowed %d, duplicates %d, quarantined %d, windows %d, pending %d, balanced=%s",
        totals.consumed,
        totals.windowed,
        totals.duplicates,
        totals.quarantined_total,
        totals.windows,
        engine.pending,
        summary.balanced,
    )
    return summary


class Outage:
    """A broker that stopped answering: waited for with exponential backoff, given up after `limit_s`."""

    def __init__(self, limit_s: float, logger: Any, broker: str = "Kafka broker") -> None:
        self.limit_s, self.logger, self.broker = limit_s, logger, broker
        self.since: float | None = None
        self.tries = 0
        self.longest_s = 0.0  # the longest outage this run survived

    def wait(self) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            self.logger.warning("%s is not answering; retrying for up to %.0f s", self.broker, self.limit_s)
        waited = now - self.since
        if waited > self.limit_s:
            raise BrokerUnavailable(
                f"{self.broker} has not answered for {waited:.0f} s (broker_outage_timeout_s={self.limit_s:.0f}); "
                "nothing was lost: rerun to resume from the last checkpoint"
            )
        self.tries += 1
        time.sleep(min(0.25 * 2**self.tries, 5.0, max(0.0, self.limit_s - waited) + 0.1))

    def waited_elsewhere(self, seconds: float) -> None:
        """A call that blocked on the broker (the dead-letter send waits for its acknowledgements)."""
        if seconds > 2.0:
            self.longest_s = max(self.longest_s, seconds)
            self.logger.warning("%s answered after %.1f s", self.broker, seconds)

    def over(self) -> None:
        if self.since is not None:
            lasted = time.monotonic() - self.since
            self.longest_s = max(self.longest_s, lasted)
            self.logger.warning("%s answers again after %.1f s", self.broker, lasted)
        self.since, self.tries = None, 0


def new_id() -> str:
    """A run or sample id: UTC time first, so ids sort in time order."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
