"""Prefect's local API server, started without importing Prefect (runtime.prefect_api): the same decision as
Prefect's own settings, a real server that answers and stops, and its failures as one clear line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.errors import VitalStreamError
from runtime.prefect_api import LocalServer, prefect_would_start_a_server

ROOT = Path(__file__).resolve().parents[2]
PREFECT_VARIABLES = ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH", "PREFECT_TEST_MODE")
EPHEMERAL = ("PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE")
PROFILES = """\
active = "{active}"
[profiles.remote]
PREFECT_API_URL = "http://prefect.example:4200/api"
[profiles.bare]
PREFECT_LOGGING_LEVEL = "INFO"
[profiles.local]
PREFECT_SERVER_EPHEMERAL_ENABLED = "true"
"""
REMOTE, LOCAL = PROFILES.format(active="remote"), PROFILES.format(active="local")


def _prefect_decides() -> bool:
    """Prefect's own answer, from its settings read afresh: no API URL and ephemeral mode on."""
    from prefect.settings import Settings

    settings = Settings()
    return not settings.api.url and settings.server.ephemeral.enabled


@pytest.mark.parametrize(
    ("case", "env", "files", "expected"),
    [
        ("no profiles file: Prefect's default profile", {}, {}, True),
        ("PREFECT_API_URL set", {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}, {}, False),
        ("active profile names a server", {}, {"home/profiles.toml": REMOTE}, False),
        ("active profile, ephemeral mode on", {}, {"home/profiles.toml": LOCAL}, True),
        ("active profile without ephemeral mode", {}, {"home/profiles.toml": PROFILES.format(active="bare")}, False),
        ("unknown active profile", {}, {"home/profiles.toml": PROFILES.format(active="gone")}, True),
        ("PREFECT_PROFILE wins", {"PREFECT_PROFILE": "remote"}, {"home/profiles.toml": LOCAL}, False),
        ("ephemeral mode off", {"PREFECT_SERVER_EPHEMERAL_ENABLED": "false"}, {}, False),
        ("older name", {"PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "0"}, {}, False),
        ("PREFECT_PROFILES_PATH", {"PREFECT_PROFILES_PATH": "{tmp}/p.toml"}, {"p.toml": REMOTE}, False),
        ("pyproject.toml without [tool.prefect]", {}, {"cwd/pyproject.toml": "[project]\nname = 'x'\n"}, True),
    ],
)  # fmt: skip
def test_the_decision_is_prefects_own(
    case: str,
    env: dict[str, str],
    files: dict[str, str],
    expected: bool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for name in (*PREFECT_VARIABLES, *EPHEMERAL):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "cwd").mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path / "cwd")
    assert prefect_would_start_a_server() == _prefect_decides() == expected, case


@pytest.mark.parametrize(
    "name, text", [("prefect.toml", "[api]\nurl = 'http://x/api'\n"), (".env", "PREFECT_API_URL=http://x/api\n"),
                   ("pyproject.toml", "[tool.prefect.api]\nurl = 'http://x/api'\n")],
)  # fmt: skip
def test_prefect_settings_in_the_working_directory_leave_the_choice_to_prefect(
    name: str, text: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for variable in (*PREFECT_VARIABLES, *EPHEMERAL):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert prefect_would_start_a_server()
    (tmp_path / name).write_text(text)
    assert not prefect_would_start_a_server()
    assert not _prefect_decides()  # these name a server: Prefect would not start one either


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One Prefect home for the module's servers: its database is created (migrated) once."""
    env = {k: v for k, v in os.environ.items() if k not in PREFECT_VARIABLES}
    return {**env, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home"))}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_server_answers_then_stops(server_env: dict[str, str]) -> None:
    server = LocalServer(server_env)
    assert server.proc is not None
    pid = server.proc.pid
    try:
        server.ready()
        with urllib.request.urlopen(f"{server.url}/health", timeout=10) as answer:
            assert answer.status == 200 and json.loads(answer.read()) is True
        with urllib.request.urlopen(f"{server.url}/admin/version", timeout=10) as answer:
            assert json.loads(answer.read())  # Prefect's API, not just something listening
    finally:
        server.stop()
    assert not _alive(pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)  # nothing listens there any more
    server.stop()  # twice: no-op


def test_a_server_that_exits_at_start_is_one_clear_error(server_env: dict[str, str], tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")  # a database under a file: the server cannot create it
    env = {**server_env, "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{blocked}/prefect.db"}
    server = LocalServer(env)
    with pytest.raises(VitalStreamError) as error:
        server.ready(timeout_s=120)
    message = str(error.value)
    assert "\n" not in message
    assert "Prefect's local API server" in message and "exited with code 3" in message
    assert "unable to open database file" in message  # the end of its own error output
    assert "PREFECT_API_URL" in message and "prefect server start" in message  # what to do instead
    assert server.proc is None


def test_a_port_taken_before_the_server_listens_is_one_clear_error(server_env: dict[str, str]) -> None:
    server = LocalServer(server_env)
    # Another program that binds as uvicorn does (SO_REUSEADDR) takes the held port first.
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", server.port))
    squatter.listen()
    try:
        with pytest.raises(VitalStreamError) as error:
            server.ready(timeout_s=120)
    finally:
        squatter.close()
    assert "exited with code 3" in str(error.value) and "address already in use" in str(error.value)
    assert "PREFECT_API_URL" in str(error.value)


def test_a_plain_bind_cannot_take_the_held_port(server_env: dict[str, str]) -> None:
    server = LocalServer(server_env)
    try:
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", server.port))
    finally:
        server.stop()


def test_a_server_not_answering_in_time_is_one_clear_error_and_is_stopped(server_env: dict[str, str]) -> None:
    server = LocalServer(server_env)
    assert server.proc is not None
    pid = server.proc.pid
    with pytest.raises(VitalStreamError, match=r"did not answer at http://127\.0\.0\.1:\d+/api/health within 0\.01 s"):
        server.ready(timeout_s=0.01)
    assert not _alive(pid)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_the_server_stops_when_the_process_that_launched_it_is_killed(server_env: dict[str, str]) -> None:
    code = "import time\nfrom runtime.prefect_api import LocalServer\n"
    code += "s = LocalServer()\nprint(s.proc.pid, flush=True)\ntime.sleep(120)\n"
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=server_env, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    server_pid = int(parent.stdout.readline())
    time.sleep(1.0)  # past the server's own check of its parent
    assert _alive(server_pid)
    parent.send_signal(signal.SIGKILL)  # no atexit, no finally
    parent.wait()
    deadline = time.monotonic() + 30
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(server_pid)


def test_started_points_prefect_at_the_server_and_stops_it_when_prefect_is_done(server_env: dict[str, str]) -> None:
    code = (
        "import os, sys, json\n"
        "from runtime.prefect_api import started\n"
        "with started() as api:\n"  # Prefect not imported in the block: stopped when it ends
        "    inside = os.environ.get('PREFECT_API_URL')\n"
        "    url, proc = api.url, api.proc\n"
        "print(json.dumps([inside == url, 'PREFECT_API_URL' in os.environ, proc.poll() is not None]))\n"
        "with started() as api:\n"  # imported in the block: Prefect's API until the interpreter exits
        "    from prefect.settings import PREFECT_API_URL\n"
        "    url, proc = api.url, api.proc\n"
        "print(json.dumps([PREFECT_API_URL.value() == url, proc.poll() is None, proc.pid]))\n"
        "with started() as api:\n"  # imported before: Prefect decides, nothing is started
        "    print(json.dumps(api is None))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=server_env, capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    assert json.loads(out[0]) == [True, False, True]  # set inside, restored after, the server stopped
    uses_it, alive_after_the_block, pid = json.loads(out[1])
    assert uses_it and alive_after_the_block
    assert not _alive(pid)  # stopped at the interpreter's exit
    assert json.loads(out[2]) is True
