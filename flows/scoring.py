"""The scoring flow: Kafka -> engine (decode, validate, window, score) -> Parquet, in micro-batches.

Per batch the order is fixed: write Parquet and the state checkpoint, then commit Kafka offsets. A crash
between the two replays the batch into the same file names (the batch id is derived from its offsets).
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
from pipeline.errors import ModelError
from pipeline.kafka_io import KafkaSettings, ensure_topics
from pipeline.quality import QualityProcess
from pipeline.score import Scorer
from pipeline.sink import ensure_writable

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


@task(name="write-batch", retries=2, retry_delay_seconds=[1, 4], cache_policy=NO_CACHE)
def write_batch(engine: Engine, out: BatchOutput) -> None:
    engine.write(out)


@task(name="validate-quality", cache_policy=NO_CACHE)
def validate_quality(engine: Engine, run_id: str, quality: QualityProcess) -> dict[str, Any]:
    return engine.validate_quality(run_id, quality.validate)


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
    ensure_writable(settings.lake)
    prepare_topics(kafka)
    engine = Engine(
        EngineConfig(settings.lake, settings.group, settings.window(), settings.quality_sample_rows),
        build_scorer(settings),
    )
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    consumer = ConsumerProcess(kafka, settings.group, settings.max_batch_records)
    consumer.resume_from(engine.offsets)
    run = Totals()
    pending_before = engine.pending
    started = time.perf_counter()
    batches = 0
    bar = _progress(progress)
    quality_process = QualityProcess()  # imports Great Expectations while this run consumes
    try:
        consumer.wait_for_assignment()
        idle_polls = 0
        while True:
            raw = consumer.poll_batch()
            lagging = consumer.lagging()
            if not raw:
                idle_polls += 1
                if mode != "follow" and (not lagging or idle_polls >= max_idle_polls):
                    break
                continue
            idle_polls = 0
            out = engine.process(raw, lagging=lagging)
            write_batch(engine, out)
            consumer.commit(engine.offsets)
            run.add(out.counts)
            batches += 1
            if bar is not None:
                bar.update(out.counts.consumed)
            logger.debug("batch %s: %s", out.batch_id, out.counts.as_dict())
        if mode == "drain":
            out = engine.process([], drain=True)
            write_batch(engine, out)
            run.add(out.counts)
        quality = validate_quality(engine, run_id, quality_process)
    finally:
        consumer.close()
        quality_process.close()
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
