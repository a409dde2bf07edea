"""Outages mid-run, on the real broker and flow: the broker paused (SIGSTOP) and resumed, paused for longer
than `broker_outage_timeout_s`, and a lake that stops being writable. Each run ends with the same lake as an
uninterrupted run, so nothing was lost or doubled. OUTAGE_S sets the pause survived (`make soak`: longer).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import assert_same_lake

from pipeline.config import Settings
from pipeline.errors import BrokerUnavailable, LakeNotWritable
from pipeline.kafka_io import ensure_topics
from pipeline.kafka_publish import produce, producer
from pipeline.kafka_settings import KafkaSettings
from sim.broker import EmbeddedBroker
from sim.simulate import SimulationConfig, encode, simulate

pytestmark = pytest.mark.integration
PREFIX = "outage."
OUTAGE_S = float(os.environ.get("OUTAGE_S", "7"))  # longer than the 6 s session timeout: the group rejoins


@pytest.fixture(scope="module")
def broker(session_broker: EmbeddedBroker) -> EmbeddedBroker:
    return session_broker


@pytest.fixture(scope="module")
def produced(broker: EmbeddedBroker) -> int:
    kafka = KafkaSettings(broker.bootstrap, topic_prefix=PREFIX, partitions=3)
    ensure_topics(kafka)
    prod = producer(kafka)
    # No out-of-order or very late data: which readings are late depends on batch boundaries (as in the
    # crash test), and an outage moves them.
    cfg = SimulationConfig(
        patients=12, hours=0.5, seed=5, malformed_rate=0.01, out_of_order_rate=0.0, very_late_rate=0.0
    )
    sim = simulate(cfg)
    n = sum(produce(prod, kafka, chunk) for chunk in encode(sim))
    prod.close()
    return n


@pytest.fixture(scope="module")
def clean_lake(
    broker: EmbeddedBroker, produced: int, prefect_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from flows.scoring import scoring_flow

    lake = tmp_path_factory.mktemp("clean")
    s = scoring_flow(settings(lake, "clean"), broker.bootstrap, mode="drain")
    assert s["consumed"] == produced and s["balanced"]
    return lake


def settings(lake: Path, group: str, **kw: float | str) -> Settings:
    return Settings(topic_prefix=PREFIX, lake=lake, group=group, max_batch_records=1500, **kw)  # type: ignore[arg-type]


def checkpointed(lake: Path, group: str) -> dict:
    state = lake / "_state" / group
    try:
        return dict(json.loads((state / (state / "CURRENT").read_text().strip() / "state.json").read_text()))
    except (OSError, ValueError):
        return {}


def after_first_checkpoint(lake: Path, group: str, action: Callable[[], None], seq: int = 0) -> threading.Thread:
    """Run `action` once the run has checkpointed a batch numbered above `seq`."""

    def run() -> None:
        deadline = time.monotonic() + 120
        while checkpointed(lake, group).get("seq", 0) <= seq and time.monotonic() < deadline:
            time.sleep(0.01)
        action()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def assert_exact(lake: Path, group: str, clean: Path, produced: int) -> None:
    assert_same_lake(lake, clean)
    t = checkpointed(lake, group)["totals"]
    assert t["consumed"] == produced == t["windowed"] + t["duplicates"] + sum(t["quarantined"].values())


def test_a_paused_broker_is_waited_for_and_the_run_carries_on_without_loss(
    broker: EmbeddedBroker, produced: int, clean_lake: Path, tmp_path: Path
) -> None:
    from flows.scoring import scoring_flow

    assert broker.proc is not None
    paused: list[float] = []

    def outage() -> None:
        os.kill(broker.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        t0 = time.monotonic()
        time.sleep(OUTAGE_S)
        os.kill(broker.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        paused.append(time.monotonic() - t0)

    pauser = after_first_checkpoint(tmp_path, "paused", outage)
    s = scoring_flow(
        settings(tmp_path, "paused", broker_outage_timeout_s=OUTAGE_S + 60), broker.bootstrap, mode="drain"
    )
    pauser.join()

    assert paused and paused[0] >= OUTAGE_S
    assert s["consumed"] == produced and s["balanced"]
    assert_exact(tmp_path, "paused", clean_lake, produced)
    print(f"\noutage survived: broker paused {paused[0]:.1f} s mid-run; run waited {s['outage_s']} s for answers")


def test_a_broker_away_too_long_then_a_lake_that_stops_being_writable_lose_nothing(
    broker: EmbeddedBroker, produced: int, clean_lake: Path, tmp_path: Path
) -> None:
    """Two failures in a row on one lake, then a restart that must end exactly as a clean run. First the
    broker is paused past broker_outage_timeout_s (through the CLI: exit 3, one line); then, on restart, the
    state checkpoint stops being writable mid-run (the batch's files are written, its checkpoint and commit
    never happen)."""
    from prefect.settings import PREFECT_API_URL

    from flows.scoring import scoring_flow

    assert broker.proc is not None
    # Instance 0/1: this process reads every partition by assignment, not through the group, so a restart
    # need not wait for the stopped run's member to time out of the group (the paused test covers the group).
    state = "away.0of1"
    pauser = after_first_checkpoint(tmp_path, state, lambda: os.kill(broker.proc.pid, signal.SIGSTOP))  # type: ignore[union-attr]
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),  # the session's test server: no server start per run
        "VITALSTREAM_TOPIC_PREFIX": PREFIX,
        "VITALSTREAM_MAX_BATCH_RECORDS": "1500",
        "VITALSTREAM_BROKER_OUTAGE_TIMEOUT_S": "3",
        "VITALSTREAM_INSTANCE": "0/1",
    }
    cmd = [sys.executable, "-m", "cli.main", "run", "--bootstrap", broker.bootstrap, "--lake", str(tmp_path)]
    try:
        t0 = time.monotonic()
        r = subprocess.run([*cmd, "--group", "away", "--drain"], env=env, capture_output=True, text=True, timeout=180)
        stopped_after = time.monotonic() - t0
    finally:
        pauser.join()
        os.kill(broker.proc.pid, signal.SIGCONT)
    assert r.returncode == 3, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    # the broker stops answering the consumer or the dead-letter producer first, whichever asks first
    assert last.startswith("vitalstream: error: ") and broker.bootstrap in last, r.stderr
    assert "within 3 s" in last or "broker_outage_timeout_s=3" in last, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert stopped_after < 60
    seq = checkpointed(tmp_path, state)["seq"]
    assert seq >= 1

    state_dir = tmp_path / "_state" / state
    aside = tmp_path / "state-aside"

    def break_lake() -> None:  # the state directory becomes a file: every checkpoint write fails (as root too)
        state_dir.rename(aside)
        state_dir.write_text("not a directory")

    breaker = after_first_checkpoint(tmp_path, state, break_lake, seq=seq)
    with pytest.raises(LakeNotWritable, match="cannot write state checkpoint"):
        scoring_flow(settings(tmp_path, "away", instance="0/1"), broker.bootstrap, mode="drain")
    breaker.join()
    state_dir.unlink()
    aside.rename(state_dir)
    seq = checkpointed(tmp_path, state)["seq"]
    assert list(tmp_path.glob(f"*/date=*/part-{state}-{seq + 1:09d}.parquet"))  # the failed batch's files

    s = scoring_flow(settings(tmp_path, "away", instance="0/1"), broker.bootstrap, mode="drain")  # the restart
    assert s["balanced"]
    assert_exact(tmp_path, state, clean_lake, produced)


@pytest.mark.skipif(not os.environ.get("SOAK"), reason="slow (connection timeouts); runs under make soak")
def test_the_flow_gives_up_on_an_unanswering_broker_at_start(tmp_path: Path, prefect_session: None) -> None:
    """A broker that accepts connections but never answers (paused from the start) is reported, not waited on."""
    from flows.scoring import scoring_flow

    with EmbeddedBroker() as b:
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(BrokerUnavailable):
                scoring_flow(Settings(lake=tmp_path, connect_timeout_s=2, assignment_timeout_s=3), b.bootstrap)
            assert time.monotonic() - t0 < 90
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)


def test_a_group_that_assigns_no_partitions_is_reported_within_the_timeout(broker: EmbeddedBroker) -> None:
    """A member that sorts first takes every (single) partition under the range assignor; ours is left with
    none, as in a group stuck in a rebalance. The run reports it after assignment_timeout_s."""
    from kafka import KafkaConsumer

    from pipeline.consumer_process import ConsumerProcess

    kafka = KafkaSettings(broker.bootstrap, topic_prefix="stuck.", partitions=1, assignment_timeout_s=2)
    ensure_topics(kafka)
    hog = KafkaConsumer(
        bootstrap_servers=[broker.bootstrap],
        group_id="stuck",
        client_id="a-hog",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1500,
    )
    hog.subscribe(kafka.topics())
    stop = threading.Event()

    def keep_polling() -> None:
        while not stop.is_set():
            hog.poll(timeout_ms=200)

    while not hog.assignment():
        hog.poll(timeout_ms=200)
    poller = threading.Thread(target=keep_polling, daemon=True)
    poller.start()
    consumer = ConsumerProcess(kafka, "stuck")
    try:
        t0 = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="assigned no partitions within 2 s"):
            consumer.wait_for_assignment()
        assert time.monotonic() - t0 < 30
        assert len(hog.assignment()) == 4
    finally:
        consumer.close()
        stop.set()
        poller.join()
        hog.close()
