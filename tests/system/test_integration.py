"""Through the real parts: the embedded Kafka-protocol broker, kafka-python, the Prefect flow, Great
Expectations, the shipped checkpoint and Parquet. Nothing here is mocked."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from conftest import T0

from pipeline.config import Settings
from pipeline.kafka_io import ensure_topics
from pipeline.kafka_publish import produce, producer
from pipeline.kafka_settings import KafkaSettings
from sim.broker import EmbeddedBroker
from sim.simulate import SimulationConfig, encode, simulate

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(session_broker: EmbeddedBroker) -> EmbeddedBroker:
    return session_broker  # shared with the other broker tests (conftest), each on its own topic prefix


@pytest.fixture
def prefect(prefect_session: None) -> None:
    """The session's Prefect test server (conftest): starting one costs about 9 s."""


def produce_simulation(bootstrap: str, prefix: str, cfg: SimulationConfig) -> int:
    kafka = KafkaSettings(bootstrap, topic_prefix=prefix, partitions=3)
    ensure_topics(kafka)
    prod = producer(kafka)
    try:
        return sum(produce(prod, kafka, chunk) for chunk in encode(simulate(cfg)))
    finally:
        prod.close()


def read(lake: Path, name: str) -> object:
    return ds.dataset(lake / name, format="parquet", partitioning="hive").to_table()


def test_end_to_end_accounting_and_resume(broker: EmbeddedBroker, prefect: None, tmp_path: Path) -> None:
    from flows.scoring import scoring_flow

    prefix = "it1."
    produced = produce_simulation(
        broker.bootstrap, prefix, SimulationConfig(patients=12, hours=1.0, seed=11, malformed_rate=0.01)
    )
    settings = Settings(topic_prefix=prefix, lake=tmp_path / "lake", group="it1")  # the shipped model

    s = scoring_flow(settings, broker.bootstrap, mode="drain")

    assert s["consumed"] == produced
    assert s["balanced"] and s["pending_after"] == 0
    q = s["quarantined"]
    assert sum(q.values()) > 0 and s["duplicates"] > 0 and s["windows"] > 0
    windows = read(settings.lake, "windows")
    scores = read(settings.lake, "risk_scores")
    quarantine = read(settings.lake, "quarantine")
    # The accounting, from the Parquet alone (duplicates are counted, not stored):
    windowed = sum(windows.column("reading_count").to_pylist())
    assert produced == windowed + s["duplicates"] + len(quarantine)
    assert len(scores) == len(windows) == s["windows"]
    # insufficient_data (null risk) only where the context held too little: a patient's first, sparse window
    levels, risks = scores.column("risk_level").to_pylist(), scores.column("risk_score").to_pylist()
    assert set(levels) <= {"low", "medium", "high", "insufficient_data"}
    assert all((r is None) == (lv == "insufficient_data") for lv, r in zip(levels, risks, strict=True))
    assert levels.count("insufficient_data") < len(levels) / 10
    assert all(0.0 <= r <= 1.0 for r in risks if r is not None)
    by_reason: dict[str, int] = {}
    for r in quarantine.column("reason").to_pylist():
        by_reason[r] = by_reason.get(r, 0) + 1
    assert by_reason == q
    row = quarantine.slice(0, 1).to_pylist()[0]
    assert row["topic"].startswith(prefix) and row["offset"] >= 0 and row["value"] is not None
    assert s["quality"] and all(r["checked"] >= r["sampled"] > 0 for r in s["quality"].values())

    # Great Expectations validates the run's samples in its own flow, once each, and agrees with the
    # Arrow-compiled rules: a suite's sample fails exactly when the run found unexpected rows in it.
    from flows.quality_report import validation_flow

    validated = validation_flow(lake=str(settings.lake))
    assert {r["suite"] for r in validated} == set(s["quality"])
    for r in validated:
        assert r["rows"] == s["quality"][r["suite"]]["sampled"]
        assert r["success"] == (s["quality"][r["suite"]]["failed"] == 0), r
        assert Path(r["path"]).exists()
    assert validation_flow(lake=str(settings.lake)) == []  # nothing left pending

    # Produce more and run again in the same group: only the new messages are read.
    more = produce_simulation(broker.bootstrap, prefix, SimulationConfig(patients=3, hours=0.2, seed=12, start_ms=None))
    s2 = scoring_flow(settings, broker.bootstrap, mode="until-idle")
    assert s2["consumed"] == more and s2["balanced"]


def test_cli_reports_an_unreachable_broker_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "VITALSTREAM_CONNECT_TIMEOUT_S": "2"}
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", "run", "--bootstrap", "127.0.0.1:9", "--lake", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 3
    assert r.stderr.strip().count("\n") == 0 and "127.0.0.1:9" in r.stderr
    assert time.monotonic() - t0 < 30


def test_cli_reports_an_unwritable_lake(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "run",
            "--bootstrap",
            "127.0.0.1:9",
            "--lake",
            str(blocker / "lake"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 4 and "not writable" in r.stderr


def test_real_icu_recordings_replay_into_exact_windows(broker: EmbeddedBroker, prefect: None, tmp_path: Path) -> None:
    """BIDMC (PhysioNet) heart and respiration rates through Kafka: every window mean equals pandas' own."""
    import numpy as np

    from flows.scoring import scoring_flow
    from sim.replay import bidmc_messages, read_bidmc

    frame = read_bidmc()
    start = T0 - 86_400_000  # a window boundary, a day before the simulated data
    prefix = "bidmc."
    kafka = KafkaSettings(broker.bootstrap, topic_prefix=prefix, partitions=2)
    ensure_topics(kafka)
    prod = producer(kafka)
    try:
        produced = produce(prod, kafka, bidmc_messages(frame, start))
    finally:
        prod.close()
    assert produced == frame["hr_bpm"].notna().sum() + frame["resp_rate_breaths_per_min"].notna().sum()
    settings = Settings(topic_prefix=prefix, lake=tmp_path / "lake", group="bidmc")

    s = scoring_flow(settings, broker.bootstrap, mode="drain")

    assert s["consumed"] == produced and s["balanced"]
    # real recordings: only the monitor's respiration rate of 0 (bidmc_13, a lead off) is no measurement
    zero_rr = int((frame["resp_rate_breaths_per_min"] == 0).sum())
    assert s["quarantined"] == {"respiration_out_of_range": zero_rr} and zero_rr > 0 and s["duplicates"] == 0
    table = read(settings.lake, "windows")
    windows = table.set_column(
        table.schema.get_field_index("window_start"), "window_start", table.column("window_start").cast("int64")
    ).to_pandas()
    frame["window_start"] = start + frame["time_s"] // 300 * 300_000
    rr = frame["resp_rate_breaths_per_min"]
    frame["resp_rate_breaths_per_min"] = rr.mask(rr == 0)
    expected = frame.groupby(["subject_id", "window_start"])[["hr_bpm", "resp_rate_breaths_per_min"]].mean()
    got = windows.rename(columns={"patient_id": "subject_id"}).set_index(["subject_id", "window_start"])
    assert len(got) == len(expected) >= 2 * frame["subject_id"].nunique()  # 8 minutes each
    joined = expected.join(got[["heart_rate_bpm_mean", "respiration_rate_per_min_mean"]], how="inner")
    assert len(joined) == len(expected)
    np.testing.assert_allclose(joined["heart_rate_bpm_mean"], joined["hr_bpm"], rtol=1e-12)
    np.testing.assert_allclose(joined["respiration_rate_per_min_mean"], joined["resp_rate_breaths_per_min"], rtol=1e-12)
    assert not windows["glucose_present"].any()
    scores = read(settings.lake, "risk_scores").to_pandas()
    assert len(scores) == len(windows) and scores["risk_score"].between(0, 1).all()


def test_the_consumer_process_reports_an_unreachable_broker() -> None:
    from pipeline.consumer_process import ConsumerProcess
    from pipeline.errors import BrokerUnavailable

    consumer = ConsumerProcess(KafkaSettings("127.0.0.1:9", connect_timeout_s=2), "nobody")
    try:
        with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:9"):
            consumer.wait_for_assignment(timeout_s=5)
    finally:
        consumer.close()
