"""The scoring flow: Kafka -> engine (decode, validate, window, score) -> Parquet, in micro-batches.

Per batch the order is fixed: send the batch's dead letters (and wait for the broker's acknowledgement),
write Parquet and the state checkpoint, then commit Kafka offsets. A crash anywhere before the checkpoint
replays the batch into the same file names; its dead letters are sent again (at-least-once, deduplicated by
the `vitalstream.source` header).

A broker that stops answering (empty polls that a probe request cannot explain) is waited for with backoff
for up to `broker_outage_timeout_s`; past that the run stops with BrokerUnavailable, having committed
nothing it had not checkpointed, so a restart resumes exactly.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish_scoring_artifacts
from models.lstm import DEFAULT_CHECKPOINT, load_checkpoint
from pipeline.config import Settings
from pipeline.consumer_process import ConsumerProcess
from pipeline.engine import BatchOutput, Engine, EngineConfig, Totals
from pipeline.errors import BrokerUnavailable, LakeNotWritable, ModelError
from pipeline.kafka_io import DeadLetters, KafkaSettings, ensure_topics
from pipeline.privacy import key_from_env
from pipeline.score import Scorer
from pipeline.sink import ensure_writable, restrict_permissions

Mode = Literal["until-idle", "drain", "follow"]


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

    @property
    def balanced(self) -> bool:
        """consumed = windowed + duplicates + quarantined + change in readings waiting in open windows."""
        r = self.run
        return r.consumed == r.windowed + r.duplicates + r.quarantined_total + (
            self.pending_after - self.pending_before
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "batches": self.batches,
            "seconds": round(self.seconds, 2),
            **self.run.as_dict(),
            "pending_before": self.pending_before,
            "pending_after": self.pending_after,
            "balanced": self.balanced,
            "quality": self.quality,
            "lake": self.lake,
            "outage_s": round(self.outage_s, 1),
        }


def build_scorer(settings: Settings) -> Scorer:
    path = settings.model_path or DEFAULT_CHECKPOINT
    try:
        if settings.onnx_path is not None and not settings.onnx_path.exists():
            raise ModelError(f"ONNX model {settings.onnx_path} not found (write it with `vitalstream export-onnx`)")
        onnx_path = settings.onnx_path or path.with_suffix(".onnx")
        return Scorer(load_checkpoint(path), settings.levels(), engine=settings.scoring_engine, onnx_path=onnx_path)
    except FileNotFoundError as exc:
        raise ModelError(f"model checkpoint {path} not found (train one with `vitalstream train`)") from exc
    except ValueError as exc:
        raise ModelError(str(exc)) from exc


@task(name="prepare-topics", retries=3, retry_delay_seconds=[1, 2, 4], cache_policy=NO_CACHE)
def prepare_topics(kafka: KafkaSettings) -> None:
    ensure_topics(kafka)


class Outage:
    """Tracks a broker that stopped answering: waits with exponential backoff, gives up after `limit_s`."""

    def __init__(self, bootstrap: str, limit_s: float, logger: Any) -> None:
        self.bootstrap, self.limit_s, self.logger = bootstrap, limit_s, logger
        self.since: float | None = None
        self.tries = 0
        self.longest_s = 0.0  # the longest outage this run survived

    def wait(self) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            self.logger.warning(
                "Kafka broker %s is not answering; retrying for up to %.0f s", self.bootstrap, self.limit_s
            )
        waited = now - self.since
        if waited > self.limit_s:
            raise BrokerUnavailable(
                f"Kafka broker {self.bootstrap} has not answered for {waited:.0f} s "
                f"(broker_outage_timeout_s={self.limit_s:.0f}); nothing was lost: "
                "rerun to resume from the last checkpoint"
            )
        self.tries += 1
        time.sleep(min(0.25 * 2**self.tries, 5.0, max(0.0, self.limit_s - waited) + 0.1))

    def waited_elsewhere(self, seconds: float) -> None:
        """A call that blocked on the broker (the dead-letter send waits for its acknowledgements)."""
        if seconds > 2.0:
            self.longest_s = max(self.longest_s, seconds)
            self.logger.warning("Kafka broker %s answered after %.1f s", self.bootstrap, seconds)

    def over(self) -> None:
        if self.since is not None:
            lasted = time.monotonic() - self.since
            self.longest_s = max(self.longest_s, lasted)
            self.logger.warning("Kafka broker %s answers again after %.1f s", self.bootstrap, lasted)
        self.since, self.tries = None, 0


WRITE_RETRY_DELAYS_S = (1.0, 4.0)
SAMPLE_EVERY_S = 300.0  # under --follow, how often the quality sample is written for Great Expectations


def write_batch(engine: Engine, out: BatchOutput, logger: Any) -> None:
    """Parquet files, then the state checkpoint; retried twice (a full disk or a lake on a network mount can
    recover). Not a Prefect task: a task run per micro-batch (59 in a 10,000-patient run) cost API calls
    and kept Prefect's server busy recording them (its CPU time fell from 5.2 to 3.6 s without them), and
    under `--follow` it would add rows to Prefect's database forever. A write is idempotent (same file names
    for the same batch), so a retry is safe."""
    for attempt, delay in enumerate((*WRITE_RETRY_DELAYS_S, None)):
        try:
            engine.write(out)
            return
        except (LakeNotWritable, OSError) as exc:  # the sink names the path in LakeNotWritable
            if delay is None:
                raise
            logger.warning("writing batch %s failed (%s); retry %d in %.0f s", out.batch_id, exc, attempt + 1, delay)
            time.sleep(delay)


@task(name="write-quality-sample", cache_policy=NO_CACHE)
def write_quality_sample(engine: Engine) -> dict[str, dict[str, Any]]:
    """Write the sample for Great Expectations under a new id (it starts with the UTC time, so samples sort
    in time order); returns the run's counts per suite so far."""
    return engine.write_quality_sample(_new_id())


def _new_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


@flow(name="vitalstream-scoring", validate_parameters=False)
def scoring_flow(
    settings: Settings,
    bootstrap: str,
    mode: Mode = "until-idle",
    progress: bool = False,
    max_idle_polls: int = 40,
) -> dict[str, Any]:
    """Consume the four topics, score closed windows, write the lake; returns the run summary."""
    logger = get_run_logger()
    kafka = settings.kafka(bootstrap)
    pseudonym_key = key_from_env() if settings.pseudonymise else None
    restrict_permissions()  # the lake holds health data: files 0o640, directories 0o750
    ensure_writable(settings.lake)
    prepare_topics(kafka)
    engine = Engine(
        EngineConfig(
            settings.lake, settings.state_name(), settings.window(), settings.quality_sample_rows, pseudonym_key
        ),
        build_scorer(settings),
    )
    run_id = _new_id()
    sampled_at = time.monotonic()
    consumer = ConsumerProcess(kafka, settings.group, settings.max_batch_records)
    consumer.resume_from(engine.offsets)
    run = Totals()
    pending_before = engine.pending
    started = time.perf_counter()
    batches = 0
    bar = _progress(progress)
    dead_letters = DeadLetters(kafka)
    outage = Outage(kafka.bootstrap, settings.broker_outage_timeout_s, logger)
    try:
        consumer.wait_for_assignment()
        idle_polls = 0
        while True:
            raw = consumer.poll_batch()
            lagging = consumer.lagging()
            if not raw:
                if not consumer.reachable():
                    outage.wait()  # an outage is not idleness: in until-idle mode it must not end the run
                    continue
                outage.over()
                idle_polls += 1
                if mode != "follow" and (not lagging or idle_polls >= max_idle_polls):
                    break
                continue
            outage.over()
            idle_polls = 0
            out = engine.process(raw, lagging=lagging)
            sent_at = time.monotonic()
            dead_letters.send(out.dead_letters, settings.broker_outage_timeout_s)
            outage.waited_elsewhere(time.monotonic() - sent_at)  # an outage can also show up here
            write_batch(engine, out, logger)
            consumer.commit(engine.offsets)
            run.add(out.counts)
            batches += 1
            if bar is not None:
                bar.update(out.counts.consumed)
            logger.debug("batch %s: %s", out.batch_id, out.counts.as_dict())
            if mode == "follow" and time.monotonic() - sampled_at > SAMPLE_EVERY_S:
                write_quality_sample(engine)  # a run that never ends still gets validated
                sampled_at = time.monotonic()
        if mode == "drain":
            out = engine.process([], drain=True)
            write_batch(engine, out, logger)
            run.add(out.counts)
        quality = write_quality_sample(engine)
    finally:
        consumer.close()
        dead_letters.close()
        if bar is not None:
            bar.close()
    summary = RunSummary(
        run_id,
        mode,
        batches,
        time.perf_counter() - started,
        run,
        pending_before,
        engine.pending,
        quality,
        str(settings.lake),
        outage.longest_s,
    )
    logger.info(
        "consumed %d, windowed %d, duplicates %d, quarantined %d, windows %d, pending %d, balanced=%s",
        run.consumed,
        run.windowed,
        run.duplicates,
        run.quarantined_total,
        run.windows,
        engine.pending,
        summary.balanced,
    )
    publish_scoring_artifacts(settings, kafka, summary.as_dict(), engine.offsets)  # what the Prefect UI shows
    return summary.as_dict()


def _progress(enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(unit=" msg", unit_scale=True, desc="scoring", file=sys.stderr)
