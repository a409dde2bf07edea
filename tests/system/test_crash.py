"""Kill the scoring run (SIGKILL to its whole process group: scoring, consumer, Prefect's
server) at random points, restart it, and compare the lake with an uninterrupted run over the same topics,
and the alert events each published on its own alerts topic: the same (alert_id, state, sequence) set.

`make test` runs KILL_TRIALS=2; `make soak` runs more. Each trial waits until the run has checkpointed at
least one batch, then kills it after a random delay, so kills land while consuming, while writing Parquet
and between the files and the checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_lake, read_topic

from pipeline.kafka_io import ensure_topics
from pipeline.kafka_publish import produce, producer
from pipeline.kafka_settings import KafkaSettings
from sim.broker import EmbeddedBroker
from sim.simulate import SimulationConfig, encode, simulate

pytestmark = pytest.mark.integration
TRIALS = int(os.environ.get("KILL_TRIALS", "2"))


@pytest.fixture(scope="module")
def broker(session_broker: EmbeddedBroker) -> EmbeddedBroker:
    return session_broker


def run(bootstrap: str, lake: Path, group: str) -> subprocess.Popen[bytes]:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "VITALSTREAM_TOPIC_PREFIX": "kill.", "VITALSTREAM_MAX_BATCH_RECORDS": "4000"}
    env |= {"VITALSTREAM_ALERTS_TOPIC": f"kill.alerts.{group}", "VITALSTREAM_RISK_TOPIC": f"kill.risk.{group}"}
    # The session's Prefect test server: a run started without one starts its own (5-12 s each); killing a
    # run leaves its flow run marked running there, which matters to nobody.
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    cmd = [sys.executable, "-m", "cli.main", "run", "--bootstrap", bootstrap, "--lake", str(lake)]
    return subprocess.Popen(
        [*cmd, "--group", group, "--drain"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, killed as a whole like a crashed container
    )


def alert_events(lake: Path) -> list[tuple[str, str, int]]:
    import pyarrow.dataset as ds

    t = ds.dataset(lake / "alerts", format="parquet", partitioning="hive").to_table()
    return sorted(zip(*(t.column(c).to_pylist() for c in ("alert_id", "state", "sequence")), strict=True))


def checkpointed_batches(lake: Path, group: str) -> int:
    current = lake / "_state" / group / "CURRENT"
    try:
        meta = json.loads((lake / "_state" / group / current.read_text().strip() / "state.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(meta.get("seq", 0))


def test_killed_and_restarted_runs_leave_the_same_lake_as_one_clean_run(
    broker: EmbeddedBroker, prefect_session: None, tmp_path: Path
) -> None:
    kafka = KafkaSettings(broker.bootstrap, topic_prefix="kill.", partitions=3)
    ensure_topics(kafka)
    prod = producer(kafka)
    sim = simulate(SimulationConfig(patients=40, hours=1.0, seed=21, out_of_order_rate=0.0, very_late_rate=0.0))
    produced = sum(produce(prod, kafka, chunk) for chunk in encode(sim))
    prod.close()

    clean = run(broker.bootstrap, tmp_path / "clean", "clean")
    assert clean.wait(timeout=300) == 0, clean.stderr.read().decode() if clean.stderr else ""

    lake, rng, kills = tmp_path / "killed", random.Random(7), 0
    for _ in range(TRIALS):
        before = checkpointed_batches(lake, "killed")
        proc = run(broker.bootstrap, lake, "killed")
        deadline = time.monotonic() + 120
        while checkpointed_batches(lake, "killed") <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    final = run(broker.bootstrap, lake, "killed")
    assert final.wait(timeout=300) == 0, final.stderr.read().decode() if final.stderr else ""

    assert kills >= 1
    assert_same_lake(lake, tmp_path / "clean")
    # Alerts: the lake holds each event once, the topic at least once; both equal the clean run's.
    clean_events, killed_events = alert_events(tmp_path / "clean"), alert_events(lake)
    assert clean_events and killed_events == clean_events
    on_topic = read_topic(broker.bootstrap, "kill.alerts.killed", at_least=len(clean_events))
    assert {(v["alert_id"], v["state"], v["sequence"]) for _, v in on_topic} == set(clean_events)
    clean_topic = read_topic(broker.bootstrap, "kill.alerts.clean", at_least=len(clean_events))
    assert sorted((v["alert_id"], v["state"], v["sequence"]) for _, v in clean_topic) == clean_events
    state = lake / "_state" / "killed"
    totals = json.loads((state / (state / "CURRENT").read_text().strip() / "state.json").read_text())["totals"]
    windowed_dup_quarantined = totals["windowed"] + totals["duplicates"] + sum(totals["quarantined"].values())
    assert totals["consumed"] == produced == windowed_dup_quarantined
    print(f"\nkill trials {TRIALS}: {kills} killed mid-run; {produced:,} messages; totals {totals}")
