"""The consumer process started ahead of its run: it joins the group before the offsets to resume from are
known, seeks to them before it hands anything out, creates missing topics when asked, falls back to a child
started afresh when the early one failed, and a run that finds nothing loads no pandas, numba or PyTorch in
it. Against the session's embedded broker, each test on its own topic prefix."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from pipeline.batch import RawBatch
from pipeline.config import Settings
from pipeline.consumer_process import ConsumerProcess
from pipeline.kafka_io import ensure_topics
from pipeline.kafka_publish import produce, producer
from pipeline.kafka_settings import KafkaSettings
from sim.broker import EmbeddedBroker, free_port

T0 = 1_795_305_600_000


def kafka(bootstrap: str, partitions: int = 1, instance: tuple[int, int] | None = None) -> KafkaSettings:
    prefix = f"cp{uuid.uuid4().hex[:8]}."
    return KafkaSettings(bootstrap, topic_prefix=prefix, partitions=partitions, connect_timeout_s=5, instance=instance)


def produce_respiration(s: KafkaSettings, n: int) -> None:
    ensure_topics(s)
    prod = producer(s)
    try:
        produce(prod, s, [("respiration", b"P1", b"%d" % i, T0 + i) for i in range(n)])
    finally:
        prod.close()


def drain(consumer: ConsumerProcess, expected: int) -> list[RawBatch]:
    got: list[RawBatch] = []
    deadline = time.monotonic() + 20
    while sum(len(b) for b in got) < expected and time.monotonic() < deadline:
        got += consumer.poll_batch()
    return got


def test_a_consumer_started_before_its_offsets_are_known_resumes_at_them(session_broker: EmbeddedBroker) -> None:
    s = kafka(session_broker.bootstrap)
    produce_respiration(s, 10)
    consumer = ConsumerProcess(s, f"g-{s.topic_prefix}")
    try:
        consumer.start()
        time.sleep(4)  # the group join (about 3 s on the embedded broker) is over before the offsets arrive
        consumer.resume_from({f"{s.topic('respiration')}:0": 6})
        assert f"{s.topic('respiration')}:0" in consumer.wait_for_assignment(timeout_s=20)
        got = drain(consumer, 4)
    finally:
        consumer.close()
    assert [int(o) for b in got for o in b.offsets] == [6, 7, 8, 9]
    assert [v for b in got for v in b.values.to_pylist()] == [b"6", b"7", b"8", b"9"]


def test_a_consumer_started_early_creates_missing_topics_before_it_joins(session_broker: EmbeddedBroker) -> None:
    s = kafka(session_broker.bootstrap, partitions=2)  # no topics yet
    consumer = ConsumerProcess(s, f"g-{s.topic_prefix}")
    try:
        consumer.start()
        assigned = consumer.wait_for_assignment(timeout_s=20)
    finally:
        consumer.close()
    assert assigned == {f"{t}:{p}" for t in s.input_topics() for p in (0, 1)}


def test_an_early_consumer_that_failed_is_replaced_by_one_started_afresh() -> None:
    port = free_port()
    s = KafkaSettings(f"127.0.0.1:{port}", topic_prefix="late.", partitions=1, connect_timeout_s=1, instance=(0, 1))
    consumer = ConsumerProcess(s, "late")
    try:
        consumer.start()  # no broker yet: the early child gives up
        deadline = time.monotonic() + 30
        while consumer._proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert consumer._proc.poll() is not None
        with EmbeddedBroker(port=port):
            produce_respiration(s, 3)
            assert consumer.wait_for_assignment(timeout_s=20) == {f"{t}:0" for t in s.input_topics()}
            assert [int(o) for b in drain(consumer, 3) for o in b.offsets] == [0, 1, 2]
            consumer.close()
    finally:
        consumer.close()


def test_consumer_started_hands_its_process_to_the_run_or_stops_it(session_broker: EmbeddedBroker) -> None:
    from runtime.wiring import _consumer, consumer_started

    s = kafka(session_broker.bootstrap, instance=(0, 1))
    settings = Settings(topic_prefix=s.topic_prefix, partitions=1, instance="0/1", group=f"g-{s.topic_prefix}")
    with consumer_started(settings, s.bootstrap, "until-idle") as early:
        taken = _consumer(settings, s.bootstrap, "until-idle")
        assert taken is early
        assert _consumer(settings, s.bootstrap, "until-idle") is not early  # handed over once
        other = Settings(topic_prefix=s.topic_prefix, partitions=1, instance="0/1", group="another-group")
        assert _consumer(other, s.bootstrap, "until-idle") is not early
        assert _consumer(settings, s.bootstrap, "follow") is not early  # a follow run fetches differently
        child = early._proc
        assert child.poll() is None
    assert early._proc is None and child.poll() is not None  # stopped when the block ends, at the latest
    with consumer_started(settings, s.bootstrap, "until-idle") as unused:
        child = unused._proc
    assert unused._proc is None and child.poll() is not None  # not taken (the flow run failed first): stopped
    assert _consumer(settings, s.bootstrap, "until-idle") is not unused


def test_a_run_that_finds_nothing_loads_no_pandas_numba_or_torch_in_the_consumer_process(
    session_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    s = kafka(session_broker.bootstrap, instance=(0, 1))
    ensure_topics(s)
    consumer = ConsumerProcess(s, f"g-{s.topic_prefix}")
    try:
        consumer.start()
        consumer.wait_for_assignment(timeout_s=20)
        assert consumer.poll_batch() == []  # an empty fetch went through the record decoder
        maps = Path(f"/proc/{consumer._proc.pid}/maps").read_text()
    finally:
        consumer.close()
    assert "pyarrow" in maps  # the check sees the libraries it loaded
    for heavy in ("pandas", "numba", "llvmlite", "torch"):
        assert f"/{heavy}/" not in maps, heavy


def test_an_interpreter_launched_ahead_becomes_the_consumer_or_is_stopped(session_broker: EmbeddedBroker) -> None:
    from pipeline.consumer_process import Launched

    s = kafka(session_broker.bootstrap, instance=(0, 1))
    produce_respiration(s, 3)
    child = Launched()
    consumer = ConsumerProcess(s, f"g-{s.topic_prefix}", child=child)
    try:
        consumer.wait_for_assignment(timeout_s=20)
        assert consumer._proc is child.proc  # configured, not another process started
        assert [int(o) for b in drain(consumer, 3) for o in b.offsets] == [0, 1, 2]
        child.close()  # taken: closing it is the consumer's business
        assert child.proc.poll() is None
    finally:
        consumer.close()
    assert child.proc.poll() is not None
    unused = Launched()
    ConsumerProcess(s, "never-started", child=unused).close()
    assert unused.proc.poll() is not None
