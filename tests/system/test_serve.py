"""Deployments: schedules, entrypoints and parameters as built; the scoring deployment's flow run against the
embedded broker publishing its artifacts to a real Prefect API; and (opt-in, slow) `vitalstream serve`
against a real `prefect server start` that runs a deployment."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.serve import deployments
from pipeline.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_deployments_have_the_schedules_entrypoints_and_parameters_of_their_flows(tmp_path: Path) -> None:
    settings = Settings(bootstrap="kafka:9092", lake=tmp_path / "lake", compact_cron="15 * * * *")
    built = {d.name: d for d in deployments(settings, config_file=tmp_path / "v.toml")}

    crons = {name: [s.schedule.cron for s in d.schedules or []] for name, d in built.items()}  # type: ignore[union-attr]
    assert crons == {
        "scoring": ["* * * * *"],
        "compaction": ["15 * * * *"],
        "validate": ["*/5 * * * *"],
        "quality-report": ["30 6 * * *"],
        "retraining": ["0 2 * * *"],
    }
    flows = {
        "scoring": "vitalstream-scoring",
        "compaction": "vitalstream-compaction",
        "validate": "vitalstream-validate",
        "quality-report": "vitalstream-quality-report",
        "retraining": "vitalstream-train",
    }
    for name, d in built.items():
        assert all(s.schedule.timezone == "UTC" for s in d.schedules or [])  # type: ignore[union-attr]
        assert d.flow_name == flows[name]
        # The entrypoint is a module path that imports to the very flow, with parameters it accepts.
        module, _, attr = (d.entrypoint or "").rpartition(".")
        fl = getattr(importlib.import_module(module), attr)
        assert fl.name == flows[name]
        assert set(d.parameters) <= set(inspect.signature(fl.fn).parameters)
        json.dumps(d.parameters)  # plain JSON for the API
        assert d.concurrency_limit == 1  # a run scheduled while the last is going is cancelled, not queued
    assert built["scoring"].parameters == {
        "bootstrap": "kafka:9092",
        "lake": str((tmp_path / "lake").resolve()),
        "mode": "follow",  # one long-running live run, restarted by the schedule
        "config": str(tmp_path / "v.toml"),
    }
    assert built["retraining"].parameters["out"].startswith(str((tmp_path / "lake").resolve()))
    assert built["retraining"].entrypoint == "flows.training.training_flow"


def test_serve_without_a_prefect_server_says_how_to_start_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path)  # no profile that names a server
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve", "--bootstrap", "127.0.0.1:9", "--lake", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2 and "prefect server start" in r.stderr
    assert "scoring" in r.stdout and "* * * * *" in r.stdout  # it lists what it would have served


@pytest.mark.integration
def test_the_scoring_deployment_flow_publishes_artifacts(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.testing.utilities import prefect_test_harness

    from flows.compaction import compaction_flow
    from flows.quality_report import quality_report_flow
    from flows.serve import scheduled_scoring
    from pipeline.kafka_io import ensure_topics
    from pipeline.kafka_publish import produce, producer
    from pipeline.kafka_settings import KafkaSettings
    from sim.broker import EmbeddedBroker
    from sim.simulate import SimulationConfig, encode, simulate

    lake = tmp_path / "lake"
    with EmbeddedBroker() as broker, prefect_test_harness(server_startup_timeout=60):
        kafka = KafkaSettings(broker.bootstrap, topic_prefix="serve.", partitions=2)
        ensure_topics(kafka)
        prod = producer(kafka)
        produced = sum(produce(prod, kafka, c) for c in encode(simulate(SimulationConfig(patients=5, hours=0.5))))
        prod.close()
        os.environ["VITALSTREAM_TOPIC_PREFIX"] = "serve."  # a worker's settings come from its environment
        try:
            summary = scheduled_scoring(bootstrap=broker.bootstrap, lake=str(lake), mode="drain")
        finally:
            del os.environ["VITALSTREAM_TOPIC_PREFIX"]
        # The other scheduled flows, on the lake this run wrote.
        compacted = compaction_flow(lake=str(lake))
        quality = quality_report_flow(lake=str(lake))
        with get_client(sync_client=True) as client:
            arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="vitalstream-%")))
    by_key = {a.key: a for a in arts}
    assert summary["consumed"] == produced and summary["balanced"]
    table = json.loads(by_key["vitalstream-vitalstream-scoring-top-risk"].data)  # type: ignore[arg-type]
    assert len(table) == 5 and {r["risk_level"] for r in table} <= {"low", "medium", "high", "insufficient_data"}
    ranked = [r["risk_score"] for r in table if r["risk_score"] is not None]  # not assessed: listed last
    assert [r["risk_score"] for r in table] == sorted(ranked, reverse=True) + [None] * (len(table) - len(ranked))
    md = str(by_key["vitalstream-vitalstream-scoring-run-summary"].data)
    assert f"| {produced:,} |" in md and "### Quarantined by reason" in md
    assert "total **0**" in md  # drained: nothing left in Kafka beyond the checkpoint
    assert "serve.heart_rate:1" in md and "heart_rate_readings" in md and "data_docs/index.html" in md
    assert compacted["files_after"] < compacted["files_before"] and "vitalstream-compaction" in by_key
    assert Path(quality["index"]).exists() and quality["validations"] >= 4
    verdicts = json.loads(by_key["vitalstream-data-quality"].data)  # type: ignore[arg-type]
    assert {r["suite"] for r in verdicts} == {"glucose_readings", "heart_rate_readings", "respiration_readings",
                                              "fall_readings", "windows"}  # fmt: skip
    assert str(by_key["vitalstream-data-docs"].data).startswith("[Data Docs")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        yield env
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.mark.skipif(not os.environ.get("VITALSTREAM_SERVER_TESTS"), reason="slow: set VITALSTREAM_SERVER_TESTS=1")
def test_vitalstream_serve_runs_a_deployment_on_a_real_prefect_server(
    prefect_server: dict[str, str], tmp_path: Path, tiny_checkpoint: Path
) -> None:
    """`prefect server start` + `vitalstream serve`: the compaction deployment, triggered through the API,
    runs in the served process and compacts a lake."""
    from conftest import micro_batches_of_a_day_boundary, run_engine

    lake = tmp_path / "lake"
    run_engine(lake, tiny_checkpoint, micro_batches_of_a_day_boundary(6))
    files_before = len(list(lake.glob("*/date=*/*.parquet")))
    serve = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--bootstrap", "127.0.0.1:9", "--lake", str(lake)],
        env=prefect_server,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        state = subprocess.run(
            [sys.executable, "-c", _RUN_DEPLOYMENT],
            env=prefect_server,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert state.returncode == 0, state.stderr[-2000:]
        assert "COMPLETED" in state.stdout
    finally:
        os.killpg(serve.pid, 2)
        serve.wait(timeout=60)
    files_after = len(list(lake.glob("*/date=*/*.parquet")))
    assert files_after < files_before and all("compact-" in p.name for p in lake.glob("*/date=*/*.parquet"))


_RUN_DEPLOYMENT = """
import time
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
with get_client(sync_client=True) as c:
    deadline = time.monotonic() + 120
    while True:  # `vitalstream serve` registers its deployments after start-up
        try:
            c.read_deployment_by_name("vitalstream-compaction/compaction")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
run = run_deployment("vitalstream-compaction/compaction", timeout=180)
print(run.state.type.value)
"""
