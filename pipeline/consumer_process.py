"""The Kafka consumer in its own process, one micro-batch ahead of the pipeline.

Fetching and decoding records (in bulk: pipeline/kafka_fetch.py) holds the GIL for part of the time, so a
thread would overlap less with the pipeline's work than a child process does (docs/performance.md). The
child owns the group membership and the KafkaConsumer; it polls, turns each poll
into per-topic RawBatches of Arrow arrays (cheap to pickle: a few buffers, not a million objects), decodes
their JSON (pipeline.decode, the pipeline's first stage, which would otherwise run in the busier parent), and
sends them through a pipe together with the partitions still lagging after that poll. The pipe's send
blocks while the parent is busy, so at most one batch waits: memory stays bounded and back-pressure
reaches Kafka as a slower fetch. Commits go the other way, on a control pipe, and are made before the
child's next poll. Offsets committed here are a convenience; the state checkpoint is what a restart
resumes from (see runtime.engine), so a commit that lags by a batch loses nothing.

`ConsumerProcess` has StreamConsumer's interface, so the flow does not care which one it drives. The child
is a plain `python -m pipeline.consumer_process` given the pipes' file descriptors (not multiprocessing's
spawn, which would re-run the caller's __main__ module). It can be started early (`start`): the group join
(seconds on a broker) then runs while the caller still starts up (imports Prefect, creates the flow run,
loads the state checkpoint), and the offsets to resume from follow when `wait_for_assignment` is called; the
child seeks to them before it fetches anything.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import traceback
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from pipeline.errors import BrokerUnavailable, VitalStreamError

if TYPE_CHECKING:  # the parent's side needs no Kafka or Arrow library: `Launched` is started before they load
    from pipeline.batch import RawBatch
    from pipeline.kafka_settings import KafkaSettings

# The child allocates and frees fetch-sized buffers (megabytes) from two threads (kafka-python's I/O thread
# and the decoder); glibc's default of one arena per thread and core keeps more freed memory than two arenas
# do, at no CPU cost (docs/performance.md). Other C libraries ignore it; the environment's own value wins.
_MALLOC_TUNING = {"MALLOC_ARENA_MAX": "2"}


class Launched:
    """A consumer process's interpreter, started before its consumer is configured: it loads its libraries
    (about half a second of CPU) while the caller still loads its own and its settings. A ConsumerProcess
    given it configures this child instead of starting another; one nobody took is stopped by `close`."""

    def __init__(self) -> None:
        data_parent, data_child = Pipe(duplex=False)
        control_child, control_parent = Pipe(duplex=False)
        fds = (data_child.fileno(), control_child.fileno())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.consumer_process", *map(str, fds)],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            env={**_MALLOC_TUNING, **os.environ},
        )
        data_child.close()
        control_child.close()
        self.data, self.control = data_parent, control_parent
        self.taken = False

    def take(self) -> tuple[Any, Connection, Connection]:
        """The process and the parent's ends of its data and control pipes, handed over once."""
        assert not self.taken
        self.taken = True
        return self.proc, self.data, self.control

    def close(self) -> None:
        """Stop the child if nobody took it (it has not talked to any broker yet); a no-op otherwise."""
        if self.taken:
            return
        self.taken = True
        self.proc.kill()
        self.proc.wait()
        self.data.close()
        self.control.close()


class ConsumerProcess:
    def __init__(
        self, settings: KafkaSettings, group: str, max_batch_records: int = 50_000, child: Launched | None = None
    ) -> None:
        """`child`: an interpreter launched ahead (`Launched`) to configure instead of starting one."""
        self.settings = settings
        self._launched = child
        self._args = (settings, group, max_batch_records)
        self._offsets: dict[str, int] = {}
        self._lagging: set[str] = set()
        self._reachable = True
        self._high_water: dict[str, int] = {}  # per assigned partition, as the child last saw it (`lag`)
        self._proc: Any = None
        self._early = False  # started by `start`, before the offsets were known
        self._ask = False  # the child waits to be asked for the next poll (the last batch was empty)
        self._data: Connection | None = None
        self._control: Connection | None = None

    def resume_from(self, offsets: dict[str, int]) -> None:
        self._offsets = dict(offsets)

    def start(self) -> None:
        """Start the child now: it connects, creates missing topics and joins the group while the caller does
        other things, and waits for `wait_for_assignment` to hand it the offsets to resume from."""
        if self._proc is None:
            self._spawn(self.settings.assignment_timeout_s)
            self._early = True

    def wait_for_assignment(self, timeout_s: float | None = None) -> set[str]:
        timeout_s = self.settings.assignment_timeout_s if timeout_s is None else timeout_s
        if self._proc is None:
            self._spawn(timeout_s)
        try:
            return self._resume_and_wait(timeout_s)
        except VitalStreamError:
            if not self._early:
                raise
        # A child started early that failed (a broker still starting, say) is not the answer: the run goes on
        # as without the early start, with a child started now, whose failure is reported as itself.
        self.close()
        self._spawn(timeout_s)
        return self._resume_and_wait(timeout_s)

    def _spawn(self, timeout_s: float) -> None:
        launched = self._launched if self._launched is not None and not self._launched.taken else Launched()
        self._launched = None
        self._proc, self._data, self._control = launched.take()
        self._early = False
        self._ask = False
        self._control.send((*self._args, timeout_s))

    def _resume_and_wait(self, timeout_s: float) -> set[str]:
        assert self._control is not None
        with contextlib.suppress(BrokenPipeError, OSError):  # a child that failed already: its error is read next
            self._control.send(("resume", self._offsets))
        kind, payload = self._recv(timeout_s + 60)
        if kind != "assigned":
            raise BrokerUnavailable(f"consumer process: unexpected first message {kind!r}")
        return set(payload)

    def poll_batch(self, timeout_ms: int = 500) -> list[RawBatch]:
        if self._ask:  # the last batch was empty: the child polls again when asked (see _child_main)
            assert self._control is not None
            self._control.send(("poll", None))
        kind, payload = self._recv(None)
        assert kind == "batch"
        batches, self._lagging, self._reachable, self._high_water = payload
        self._ask = not batches
        return list(batches)

    def lagging(self) -> set[str]:
        """Partitions that still had unread messages right after the poll that gave the last batch."""
        return set(self._lagging)

    def lag(self, offsets: dict[str, int]) -> dict[str, int]:
        """Messages beyond `offsets` per partition, by the high-water marks of the child's last fetches: no
        request to the broker, and the scoring process needs no Kafka client (pipeline/kafka_settings.py)."""
        from pipeline.batch import lag_beyond

        return lag_beyond(self._high_water, offsets)

    def reachable(self) -> bool:
        """Whether the broker answered when the last poll came back empty (a paused broker gives empty polls)."""
        return self._reachable

    def commit(self, offsets: dict[str, int]) -> None:
        if self._control is not None:
            self._control.send(("commit", dict(offsets)))

    def close(self) -> None:
        if self._launched is not None:
            self._launched.close()
            self._launched = None
        if self._proc is None:
            return
        assert self._control is not None and self._data is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self._control.send(("stop", None))
        # A child stuck on a broker that does not answer (its last commit, leaving the group) is not waited
        # for long: commits are a convenience, the state checkpoint is what a restart resumes from.
        deadline = time.monotonic() + 5.0
        while self._proc.poll() is None:
            if time.monotonic() > deadline:
                self._proc.kill()
                self._proc.wait()
                break
            try:
                if self._data.poll(0.05):
                    self._data.recv()  # unblock a send in progress; the batch is dropped, not committed
            except (EOFError, OSError):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        self._data.close()
        self._control.close()
        self._proc = None

    def _recv(self, timeout_s: float | None) -> tuple[str, Any]:
        assert self._data is not None
        try:
            if timeout_s is not None and not self._data.poll(timeout_s):
                raise BrokerUnavailable(f"consumer process gave no answer within {timeout_s:.0f} s")
            kind, payload = self._data.recv()
        except EOFError:
            code = self._proc.wait(timeout=10) if self._proc is not None else None
            raise BrokerUnavailable(f"consumer process ended unexpectedly (exit code {code})") from None
        if kind == "error":
            raise payload
        return kind, payload


def _child_main(data: Connection, control: Connection) -> None:
    import logging

    # Loaded before the first message, which may come seconds later (`Launched`).
    from pipeline.kafka_io import StreamConsumer, ensure_topics
    from pipeline.memory import release_memory, use_jemalloc

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    consumer: StreamConsumer | None = None
    try:
        settings, group, max_batch_records, timeout_s = control.recv()
        use_jemalloc()  # as in the pipeline: freed batch buffers go back to the OS (release_memory below)
        # The topics a run reads and writes, created when missing, here: the scoring process then needs no
        # Kafka client at all in a run that has nothing to send (pipeline/kafka_settings.py).
        ensure_topics(settings)
        consumer = StreamConsumer(settings, group, max_batch_records)
        assigned = consumer.wait_for_assignment(timeout_s)
        # Joined; nothing fetched is handed out before the offsets from the state checkpoint are applied.
        kind, offsets = control.recv()
        if kind == "stop":
            return
        consumer.resume_from(offsets)
        data.send(("assigned", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)))
        asked = True
        while True:
            pending: dict[str, int] | None = None
            # A batch with messages is followed by the next poll at once (one batch ahead of the pipeline); an
            # empty one waits until the parent asks again, so that a run that ends on it (caught up) stops
            # the child at once instead of waiting for a poll that would find nothing either.
            while not asked or control.poll():
                kind, payload = control.recv()
                if kind == "stop":
                    if pending:
                        consumer.commit(pending)
                    return
                if kind == "poll":
                    asked = True
                else:
                    pending = payload
            if pending:
                consumer.commit(pending)
            raw = decode_ahead(consumer.poll_batch())
            # An empty poll may mean "caught up" or "broker not answering": only a request tells them apart.
            reachable = bool(raw) or consumer.reachable()
            data.send(("batch", (raw, consumer.lagging(), reachable, consumer.high_water())))
            asked = bool(raw)
            del raw
            release_memory()
    except (EOFError, BrokenPipeError):
        return  # the parent went away
    except VitalStreamError as exc:
        _send_error(data, exc)
    except Exception as exc:
        _send_error(data, BrokerUnavailable(f"consumer process failed: {exc!r}\n{traceback.format_exc()}"))
    finally:
        if consumer is not None:
            with contextlib.suppress(Exception):  # the broker may be gone: leave without a fuss
                consumer.close()


def decode_ahead(raw: list[RawBatch]) -> list[RawBatch]:
    """Decode each vitals batch here, on the consumer's core, while the pipeline still works on the batch
    before (RawBatch.decoded; the engine uses it instead of decoding). The decoder is a pure function of the
    bytes, so the tables are the ones the engine would make. Should decoding fail, the batch goes as it came
    and the engine's own decode meets the same failure in the pipeline, where it is reported."""
    from pipeline.contract import STREAMS, stream_contract
    from pipeline.decode import decode

    for batch in raw:
        if batch.stream in STREAMS and batch.decoded is None:
            try:
                batch.decoded = decode(batch, stream_contract(batch.stream))
            except Exception:  # raised again by the engine, as itself
                batch.decoded = None
    return raw


def _send_error(data: Connection, exc: Exception) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):
        data.send(("error", exc))


if __name__ == "__main__":
    _child_main(Connection(int(sys.argv[1]), readable=False), Connection(int(sys.argv[2]), writable=False))
    os._exit(0)  # skip interpreter teardown of kafka-python's threads
