"""Scale-out: two flow processes in one consumer group (instances 0/2 and 1/2) over one input give the
same union of results as one process, and no patient is scored by both."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from conftest import assert_same_lake
from kafka.admin import KafkaAdminClient

from cli.main import JOIN_WAIT
from pipeline.config import Settings
from pipeline.kafka_io import ensure_topics
from pipeline.kafka_publish import produce, producer
from pipeline.kafka_settings import KafkaSettings
from sim.broker import EmbeddedBroker
from sim.simulate import SimulationConfig, encode, simulate

pytestmark = pytest.mark.integration
PREFIX = "scale."


@pytest.fixture(scope="module")
def broker(session_broker: EmbeddedBroker) -> EmbeddedBroker:
    return session_broker


def test_two_instances_give_the_union_of_one_process_and_split_the_patients(
    broker: EmbeddedBroker, prefect_session: None, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    from flows.scoring import scoring_flow

    kafka = KafkaSettings(broker.bootstrap, topic_prefix=PREFIX, partitions=4)
    ensure_topics(kafka)
    prod = producer(kafka)
    cfg = SimulationConfig(
        patients=8, hours=0.5, seed=9, malformed_rate=0.01, out_of_order_rate=0.0, very_late_rate=0.0
    )
    produced = sum(produce(prod, kafka, chunk) for chunk in encode(simulate(cfg)))
    prod.close()

    one = scoring_flow(
        Settings(topic_prefix=PREFIX, lake=tmp_path / "one", group="one"), broker.bootstrap, mode="drain"
    )
    assert one["consumed"] == produced and one["balanced"]

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "VITALSTREAM_TOPIC_PREFIX": PREFIX}
    lake = tmp_path / "two"
    cmd = [sys.executable, "-m", "cli.main", "run", "--bootstrap", broker.bootstrap, "--lake", str(lake), "--drain"]
    procs = [
        subprocess.Popen(
            [*cmd, "--group", "two", "--instance", f"{i}/2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs

    assert_same_lake(lake, tmp_path / "one")  # the union equals one process's results
    patients = []
    for i in range(2):
        files = sorted(str(f) for f in lake.glob(f"risk_scores/date=*/part-two.{i}of2-*.parquet"))
        assert files
        patients.append(set(ds.dataset(files, format="parquet").to_table().column("patient_id").to_pylist()))
    assert patients[0] and patients[1] and not patients[0] & patients[1]  # no patient scored by both
    consumed = [int(out.split("consumed")[1].split()[0].replace(",", "")) for out, _ in outs]
    # each summary says how long its run waited for the consumer (bench/startup.py reads it)
    assert all(re.search(rf"\d+\.\d {re.escape(JOIN_WAIT)}", out) for out, _ in outs), outs
    assert sum(consumed) == produced and all(consumed)
    # Both committed to the one group: its offsets cover the whole input (lag monitoring works).
    admin = KafkaAdminClient(bootstrap_servers=[broker.bootstrap])
    try:
        committed = admin.list_group_offsets("two")["two"]
    finally:
        admin.close()
    assert {tp.topic for tp in committed} <= set(kafka.topics())  # partitions that had messages
    assert sum(o.offset for o in committed.values()) == produced
