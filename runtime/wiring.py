"""Start-up: settings in, the real parts plugged into the run loop (Kafka source and dead letters, the
Parquet lake, the state checkpoint, the scorer). No Prefect here: `flows.scoring` wraps `run_scoring`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

from models.paths import DEFAULT_CHECKPOINT
from models.scorer import Scorer
from pipeline.alert_policy import load_policy
from pipeline.config import Settings
from pipeline.consumer_process import ConsumerProcess, Launched
from pipeline.errors import ModelError
from pipeline.kafka_publish import DeadLetters, LiveTopics
from pipeline.kafka_settings import KafkaSettings, check_reachable
from pipeline.memory import use_jemalloc
from pipeline.privacy import key_from_env
from pipeline.sink import ParquetLake, ensure_writable, restrict_permissions
from runtime.checkpoint import FileCheckpoints
from runtime.engine import BatchOutput, EngineConfig
from runtime.loop import LoopConfig, Mode, RunSummary, run

# PyTorch's threads in a scoring run: one. The consumer process works on another core at the same time, and
# a second PyTorch thread contending with it made the network 35 times slower (0.69 s instead of 18 ms per
# 2,000 windows on 2 busy cores; docs/performance.md); one thread scores about 100,000 windows/s.
SCORING_THREADS = 1


def build_scorer(settings: Settings) -> Scorer:
    """The scorer the settings ask for; ModelError (one line, what to do) when it cannot be built."""
    from models.lstm import load_checkpoint  # PyTorch: imported when a model is needed, not at start-up

    path = settings.model_path or DEFAULT_CHECKPOINT
    try:
        if settings.onnx_path is not None and not settings.onnx_path.exists():
            raise ModelError(f"ONNX model {settings.onnx_path} not found (write it with `vitalstream export-onnx`)")
        onnx_path = settings.onnx_path or path.with_suffix(".onnx")
        return Scorer(
            load_checkpoint(path),
            settings.levels(),
            engine=settings.scoring_engine,
            onnx_path=onnx_path,
            window_ms=settings.window().window_ms,
            threads=SCORING_THREADS,
        )
    except FileNotFoundError as exc:
        raise ModelError(f"model checkpoint {path} not found (train one with `vitalstream train`)") from exc
    except ValueError as exc:
        raise ModelError(str(exc)) from exc


class LazyScorer:
    """The scorer, built (PyTorch imported, the checkpoint loaded and checked) when the engine first asks for
    it. A run that finds nothing never imports torch (about 2 s of CPU); a run that will certainly score
    builds it in the background (`prefetch`) while the consumer group join keeps the process waiting."""

    def __init__(self, build: Callable[[], Scorer]) -> None:
        self._build = build
        self._scorer: Scorer | None = None
        self._lock = threading.Lock()

    def prefetch(self) -> None:
        def build() -> None:
            with contextlib.suppress(Exception):  # a failure is raised again, as itself, at the first use
                self._get()

        threading.Thread(target=build, name="load-model", daemon=True).start()

    def _get(self) -> Scorer:
        with self._lock:
            if self._scorer is None:
                self._scorer = self._build()
            return self._scorer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


def lazy_scorer(settings: Settings, prefetch: bool = False) -> Scorer:
    """The scorer, built at first use; `prefetch` starts building it now, in the background."""
    scorer = LazyScorer(lambda: build_scorer(settings))
    if prefetch:
        scorer.prefetch()
    return cast(Scorer, scorer)


def preflight(settings: Settings, bootstrap: str) -> None:
    """The expected failures (no pseudonym key, bad alert policy, lake not writable, no model, no broker), each
    as one line, before anything starts. The model file is looked for here and loaded (digest and window
    length checked) when the first window is scored: a damaged checkpoint stops the run then, before that
    batch is written."""
    if settings.pseudonymise:
        key_from_env()
    load_policy(settings.alert_policy)
    ensure_writable(settings.lake)
    path = settings.model_path or DEFAULT_CHECKPOINT
    if not path.is_file():
        raise ModelError(f"model checkpoint {path} not found (train one with `vitalstream train`)")
    if settings.onnx_path is not None and not settings.onnx_path.exists():
        raise ModelError(f"ONNX model {settings.onnx_path} not found (write it with `vitalstream export-onnx`)")
    check_reachable(settings.kafka(bootstrap))


# Consumer processes started ahead of their run (`consumer_started`), with what identifies their consumer.
_STARTED: list[tuple[tuple[KafkaSettings, str, int], ConsumerProcess]] = []


# How long the broker holds an empty fetch, by run mode. A run that ends once caught up (and a run that finds
# nothing is just that) learns it after one short fetch; a `follow` run, idle between messages, fetches less
# often (`python bench/idle_fetch.py`: about 6 % of a core at 100 ms against 3.5 % at 400 ms on the embedded
# broker; docs/performance.md). Messages that arrive are answered at once either way.
FETCH_WAIT_MS: dict[str, int] = {"until-idle": 100, "drain": 100, "follow": 400}


def _consumer_key(settings: Settings, bootstrap: str, mode: Mode) -> tuple[KafkaSettings, str, int]:
    kafka = dataclasses.replace(settings.kafka(bootstrap), fetch_max_wait_ms=FETCH_WAIT_MS[mode])
    return kafka, settings.group, settings.max_batch_records


def _consumer(settings: Settings, bootstrap: str, mode: Mode) -> ConsumerProcess:
    """The run's consumer process: the one started ahead for these settings, else a new one."""
    key = _consumer_key(settings, bootstrap, mode)
    for i, (started_for, consumer) in enumerate(_STARTED):
        if started_for == key:
            del _STARTED[i]
            return consumer
    return ConsumerProcess(*key)


@contextlib.contextmanager
def consumer_started(
    settings: Settings, bootstrap: str, mode: Mode, child: Launched | None = None
) -> Iterator[ConsumerProcess]:
    """Start the run's consumer process now, so that its start and group join (seconds on a broker) overlap
    the rest of the start-up (importing Prefect, creating the flow run, loading the state checkpoint); a
    `run_scoring` inside the block with the same Kafka settings and group takes it over. It creates missing
    topics first (as every consumer process does). It is stopped when the block ends, if the run did
    not stop it already (or never took it: the flow run failed before it consumed). `child`: its interpreter,
    launched earlier still (pipeline.consumer_process.Launched). `mode`: the run's (`run_scoring`)."""
    key = _consumer_key(settings, bootstrap, mode)
    consumer = ConsumerProcess(*key, child=child)
    consumer.start()
    entry = (key, consumer)
    _STARTED.append(entry)
    try:
        yield consumer
    finally:
        _STARTED[:] = [e for e in _STARTED if e is not entry]
        consumer.close()


def run_scoring(
    settings: Settings,
    bootstrap: str,
    mode: Mode = "until-idle",
    logger: Any = None,
    progress: bool = False,
    max_idle_polls: int = 40,
    stop: Callable[[], bool] | None = None,
    on_batch: Callable[[BatchOutput], None] | None = None,
) -> RunSummary:
    """Consume the four topics and the ack topic (they must exist), score closed windows, raise alerts, write
    the lake and the live topics; the run summary. `stop`: ends a `follow` run when it returns True."""
    kafka = settings.kafka(bootstrap)
    pseudonym_key = key_from_env() if settings.pseudonymise else None
    restrict_permissions()  # the lake holds health data: files 0o640, directories 0o750
    ensure_writable(settings.lake)
    use_jemalloc()
    name = settings.state_name()
    engine_cfg = EngineConfig(
        settings.window(), settings.quality_sample_rows, pseudonym_key, load_policy(settings.alert_policy)
    )
    loop_cfg = LoopConfig(mode=mode, max_idle_polls=max_idle_polls, outage_timeout_s=settings.broker_outage_timeout_s)
    bar = _progress(progress)
    stop_requested = _stop_on_signals() if mode == "follow" and stop is None else None
    if stop_requested is not None:
        stop = stop_requested.is_set
    try:
        return run(
            engine_cfg,
            lazy_scorer(settings, prefetch=mode != "until-idle"),  # drain and follow runs always score
            _consumer(settings, bootstrap, mode),
            DeadLetters(kafka),
            ParquetLake(settings.lake, name),
            FileCheckpoints(settings.lake, name, settings.window()),
            loop_cfg,
            logger,
            on_batch=_chain(on_batch, (lambda out: bar.update(out.counts.consumed)) if bar is not None else None),
            names=(f"Kafka broker {kafka.bootstrap}", str(settings.lake)),
            outputs=LiveTopics(kafka),
            stop=stop,
        )
    finally:
        if bar is not None:
            bar.close()
        if stop_requested is not None:
            _restore_signals()


_SAVED_HANDLERS: dict[int, Any] = {}


def _stop_on_signals() -> threading.Event | None:
    """A live run ends cleanly on SIGTERM or SIGINT (a container stop, Ctrl-C): the batch in hand is committed
    and the consumer leaves its group. None where signals cannot be caught (not the main thread)."""
    stop = threading.Event()
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            _SAVED_HANDLERS[sig] = signal.signal(sig, lambda *_: stop.set())
    except ValueError:
        return None
    return stop


def _restore_signals() -> None:
    for sig, handler in _SAVED_HANDLERS.items():
        signal.signal(sig, handler)
    _SAVED_HANDLERS.clear()


def _chain(*calls: Callable[[BatchOutput], None] | None) -> Callable[[BatchOutput], None] | None:
    todo = [c for c in calls if c is not None]
    if not todo:
        return None

    def each(out: BatchOutput) -> None:
        for call in todo:
            call(out)

    return each


def _progress(enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(unit=" msg", unit_scale=True, desc="scoring", file=sys.stderr)
