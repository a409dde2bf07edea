"""`vitalstream run` with no Prefect server configured starts its own (runtime.prefect_api): Prefect's server
code never enters the scoring process, and no process of the run outlives it, however the run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sim.broker import EmbeddedBroker, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds processes in /proc"),
]
ROOT = Path(__file__).resolve().parents[2]
# The CLI's own main(), then what the process imported.
RUN = (
    "import sys\nfrom cli.main import main\nrc = main(sys.argv[1:])\n"
    "print('prefect imported:', 'prefect' in sys.modules, '| server code imported:',\n"
    "      'prefect.server.api.server' in sys.modules, '| kafka imported:', 'kafka' in sys.modules,\n"
    "      '| pandas imported:', 'pandas' in sys.modules, flush=True)\n"
    "sys.exit(rc)\n"
)
SERVER_APP = "prefect.server.api.server:create_app"


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Prefect home for the module's runs: its database is created (migrated) once."""
    return tmp_path_factory.mktemp("prefect-home")


def _env(prefect_home: Path, mark: str, **extra: str) -> dict[str, str]:
    """No Prefect server configured; `mark` in the environment of every process of the run."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH")
    }
    return {**env, "PREFECT_HOME": str(prefect_home), "TEST_RUN_MARK": mark, **extra}


def _processes(mark: str) -> list[str]:
    """Command lines of the live processes (zombies aside) whose environment holds the mark."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"TEST_RUN_MARK={mark}".encode() not in environ.read_bytes().split(b"\0"):
                continue
            if (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            found.append((environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def _left_behind(mark: str) -> list[str]:
    deadline = time.monotonic() + 5  # stopping is synchronous; this only absorbs reaping by init
    while (left := _processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_a_run_that_finds_nothing_uses_its_own_server_and_loads_no_prefect_server_code_kafka_or_pandas(
    session_broker: EmbeddedBroker, prefect_home: Path, tmp_path: Path
) -> None:
    mark = uuid.uuid4().hex
    prefix = f"own{mark[:6]}."
    env = _env(prefect_home, mark, VITALSTREAM_TOPIC_PREFIX=prefix)
    args = ["run", "--bootstrap", session_broker.bootstrap, "--lake", str(tmp_path / "lake"), "--group", prefix]
    r = subprocess.run(
        [sys.executable, "-c", RUN, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "accounting holds" in r.stdout  # the flow ran, against a Prefect API
    # the consumer process did the Kafka work (topics, join, fetches, lag); this one had nothing to send, and
    # converted no Python objects to Arrow (pyarrow loads pandas for that: pipeline.readings.empty_table)
    assert "prefect imported: True | server code imported: False | kafka imported: False | pandas imported: False" in (
        r.stdout
    )
    assert _left_behind(mark) == []


def test_a_run_that_fails_its_preflight_leaves_no_server_behind(prefect_home: Path, tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    env = _env(prefect_home, mark, VITALSTREAM_CONNECT_TIMEOUT_S="0.5")
    closed = f"127.0.0.1:{free_port()}"
    r = subprocess.run(
        [sys.executable, "-c", RUN, "run", "--bootstrap", closed, "--lake", str(tmp_path / "lake")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 3 and r.stderr.startswith("vitalstream: error: ") and r.stderr.count("\n") == 1
    assert closed in r.stderr
    assert _left_behind(mark) == []


def test_ctrl_c_during_start_up_stops_the_server(
    session_broker: EmbeddedBroker, prefect_home: Path, tmp_path: Path
) -> None:
    mark = uuid.uuid4().hex
    env = _env(prefect_home, mark, VITALSTREAM_TOPIC_PREFIX=f"int{mark[:6]}.")
    args = ["run", "--bootstrap", session_broker.bootstrap, "--lake", str(tmp_path / "lake")]
    run = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(SERVER_APP in cmd for cmd in _processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert any(SERVER_APP in cmd for cmd in _processes(mark)), "the run launched no server"
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    # Usually our one line and 130; a Ctrl-C that lands inside Prefect's own code can end in its traceback
    # instead (pydantic turns a KeyboardInterrupt in a serializer into an error of its own); and once in CI
    # the interpreter ended by the signal itself after printing our line (-SIGINT: what a shell reports as
    # 130). Each is an interrupted run; what this test is for is that no server is left.
    assert run.returncode in (130, 1, -signal.SIGINT), (out, err)
    assert run.returncode != 130 or "vitalstream: interrupted" in err, err
    assert _left_behind(mark) == []
