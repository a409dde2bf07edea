"""The live topics through the real parts (embedded broker, kafka-python, the Prefect flow, the shipped model):
every scored window on <prefix>risk and every alert event on <prefix>alerts, each valid against its JSON
Schema and equal to the lake's copy; a fall alerts from its reading; acknowledgements from <prefix>alerts.ack
are applied, audited in acks/, and bad ones quarantined with the accounting intact."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow.dataset as ds
import pytest
from conftest import read_topic

from pipeline.config import Settings
from pipeline.kafka_io import ensure_topics
from pipeline.kafka_publish import produce, producer
from pipeline.kafka_settings import KafkaSettings
from sim.broker import EmbeddedBroker
from sim.simulate import SimulationConfig, encode, simulate

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def schema(name: str) -> jsonschema.Draft202012Validator:
    doc = json.loads((ROOT / "schemas" / name).read_text())
    return jsonschema.Draft202012Validator(doc, format_checker=jsonschema.FormatChecker())


def table(lake: Path, name: str) -> Any:
    return ds.dataset(lake / name, format="parquet", partitioning="hive").to_table()


def test_risk_and_alerts_reach_the_live_topics_and_acks_come_back(
    session_broker: EmbeddedBroker, prefect_session: None, tmp_path: Path
) -> None:
    from flows.scoring import scoring_flow

    bootstrap, prefix = session_broker.bootstrap, "live1."
    kafka = KafkaSettings(bootstrap, topic_prefix=prefix, partitions=3)
    ensure_topics(kafka)
    sim = simulate(SimulationConfig(patients=8, hours=1.0, seed=4))
    fall_ms = int(sim.readings.column("event_time").cast("int64").to_numpy().max()) - 20 * 60_000
    fall = {"patient_id": "P000001", "device_id": "fall-P000001", "ts": fall_ms, "fall_detected": True}
    fall |= {"confidence": 0.96, "impact_g": 3.4}
    prod = producer(kafka)
    produced = sum(produce(prod, kafka, chunk) for chunk in encode(sim))
    produced += produce(prod, kafka, [("fall", b"P000001", json.dumps(fall).encode(), fall_ms + 800)])
    prod.close()

    settings = Settings(topic_prefix=prefix, lake=tmp_path / "lake", group="live1")
    s = scoring_flow(settings, bootstrap, mode="drain")
    assert s["balanced"] and s["consumed"] == produced

    risk = read_topic(bootstrap, kafka.risk_topic(), at_least=s["scored"])
    assert len(risk) == s["scored"] == len(table(settings.lake, "risk_scores")) > 0
    check_risk = schema("risk_message.json")
    for key, value in risk:
        check_risk.validate(value)
        assert key == value["patient_id"]
    lake_alerts = table(settings.lake, "alerts")
    events = read_topic(bootstrap, kafka.alerts_topic(), at_least=len(lake_alerts))
    check_alert = schema("alert_message.json")
    for key, value in events:
        check_alert.validate(value)
        assert key == value["patient_id"]
    on_topic = {(v["alert_id"], v["state"], v["sequence"]) for _, v in events}
    in_lake = set(zip(*(lake_alerts.column(c).to_pylist() for c in ("alert_id", "state", "sequence")), strict=True))
    assert on_topic == in_lake and len(events) == len(lake_alerts)
    assert sum(s["alerts"].values()) == len(events)
    falls = [v for _, v in events if v["condition"] == "fall" and v["patient_id"] == "P000001"]
    raised = next(v for v in falls if v["state"] == "raised")
    assert raised["event_time"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(fall_ms // 1000)))
    assert "confidence 0.96" in raised["reason"]

    # An ack for the fall, a malformed one and one for an alert that does not exist
    acks = [
        json.dumps({"alert_id": raised["alert_id"], "by": "nurse-7", "snooze_minutes": 10}).encode(),
        b"{nope",
        json.dumps({"alert_id": "feedfacefeedfacefeed", "by": "nurse-7"}).encode(),
    ]
    prod = producer(kafka)
    now_ms = int(time.time() * 1000)
    produce(prod, kafka, [("alerts.ack", b"P000001", value, now_ms) for value in acks])
    prod.close()
    s2 = scoring_flow(settings, bootstrap, mode="until-idle")
    assert s2["consumed"] == 3 and s2["acks"] == 1 and s2["balanced"]
    assert s2["quarantined"] == {"invalid_json": 1, "unknown_alert": 1}
    audit = table(settings.lake, "acks").to_pylist()
    assert [(a["alert_id"], a["by"], a["snooze_minutes"]) for a in audit] == [(raised["alert_id"], "nurse-7", 10.0)]
    quarantined = table(settings.lake, "quarantine")
    assert {"invalid_json", "unknown_alert"} <= set(quarantined.column("reason").to_pylist())
    after = read_topic(bootstrap, kafka.alerts_topic(), at_least=len(events) + 1)
    acked = [v for _, v in after if v["alert_id"] == raised["alert_id"] and v["state"] == "acknowledged"]
    assert len(acked) == 1 and acked[0]["acked_by"] == "nurse-7"


def test_run_follow_alerts_a_fall_while_it_runs_and_stops_cleanly_on_sigterm(
    session_broker: EmbeddedBroker, prefect_session: None, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    bootstrap, prefix = session_broker.bootstrap, "live2."
    kafka = KafkaSettings(bootstrap, topic_prefix=prefix, partitions=3)
    ensure_topics(kafka)
    env = {**os.environ, "VITALSTREAM_TOPIC_PREFIX": prefix, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    cmd = [sys.executable, "-m", "cli.main", "run", "--bootstrap", bootstrap, "--lake", str(tmp_path / "lake")]
    proc = subprocess.Popen([*cmd, "--follow"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(8)  # start-up and the group join
        assert proc.poll() is None, proc.communicate()
        now_ms = int(time.time() * 1000)
        fall = {"patient_id": "P000777", "device_id": "fall-P000777", "ts": now_ms, "fall_detected": True}
        prod = producer(kafka)
        produce(prod, kafka, [("fall", b"P000777", json.dumps(fall | {"confidence": 0.9}).encode(), now_ms)])
        prod.close()
        events = read_topic(bootstrap, kafka.alerts_topic(), at_least=1, timeout_s=30)
        assert [(v["patient_id"], v["condition"], v["state"]) for _, v in events] == [("P000777", "fall", "raised")]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "consumed 1 " in " ".join(out.split()) + " ", out  # the summary of a run that ended cleanly
