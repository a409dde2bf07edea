"""Prefect's API for the commands that run flows in this process (`run`, `demo`, `train`) when no Prefect
server is configured.

Prefect starts a temporary local server itself in that case, but to launch it, it imports the whole server
application (FastAPI, SQLAlchemy, Prefect's models) into the calling process: at 50,000 patients the run's
peak memory was 63-66 MiB higher that way, over 1 GiB (docs/performance.md, issue 14). `started`
launches the same server the same way (uvicorn, Prefect's app factory, the environment Prefect's launcher
gives it) without importing Prefect, and sets PREFECT_API_URL for this process before Prefect is imported,
so that Prefect uses it as a configured server. It is launched first thing, so that its start-up overlaps
the command's own; `LocalServer.ready` waits for it right before the first flow. It is stopped when the
block ends (errors and Ctrl-C included) or, once Prefect is imported, at the interpreter's exit, and on
Linux when this process dies (a kill -9 included).

Nothing is started, and Prefect decides as before, where Prefect would not start a server of its own (an
API URL in the environment or the active profile, ephemeral mode turned off), where a file in the working
directory may hold Prefect settings (.env, prefect.toml, pyproject.toml's [tool.prefect]: read by Prefect,
not here), and where Prefect is already imported (it reads its settings once, at import).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from pipeline.errors import VitalStreamError

# What Prefect's own launcher (prefect.server.api.server.SubprocessASGIServer) adds to the server's environment.
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}

# The server's interpreter: on Linux it first asks for SIGTERM when the process that launched it dies
# (PR_SET_PDEATHSIG; that process's pid is its first argument), then runs uvicorn as `python -m uvicorn`.
_BOOT = """\
import os, sys
parent = int(sys.argv.pop(1))
if sys.platform == "linux":
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(0)
from uvicorn.main import main
main()
"""

_HINT = (
    "to use a Prefect server of your own instead, run `prefect server start` and set "
    "PREFECT_API_URL=http://127.0.0.1:4200/api"
)
_TRUE = {"1", "true", "t", "yes", "y", "on"}
# Lines of a traceback that say nothing about the failure itself.
_NOT_SAID = ("Traceback", "The above exception", "During handling of the above", "(Background on this error")


class LocalServer:
    """Prefect's API server in a child process on 127.0.0.1. Its port is the kernel's choice, held (bound,
    not listening) until the server answers, so that no other program takes it in between. On Linux the
    server is stopped when the thread that launched it ends: launch it from the main thread."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        """`env`: the server's environment (default: this process's), to which SERVER_ENV is added."""
        app_dir = Path(_prefect_dir()).parent
        self._reserved = socket.socket()
        self._reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own socket
        self._reserved.bind(("127.0.0.1", 0))
        self.port: int = self._reserved.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (the server's stderr until `stop` closes it)
        argv = ["--app-dir", str(app_dir), "--factory", "prefect.server.api.server:create_app"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        try:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(os.getpid()), *argv],
                env={**(os.environ if env is None else env), **SERVER_ENV},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                start_new_session=True,  # Ctrl-C reaches this process, which then ends its flow run and stops it
            )
        except BaseException:
            self._reserved.close()
            self._stderr.close()
            raise
        self._healthy = False
        self._said_before = 0
        atexit.register(self.stop)

    def ready(self, timeout_s: float | None = None) -> None:
        """Wait until the server answers its health check; VitalStreamError (one line: what failed, the end of
        its error output, what to do instead) when it exits first or does not answer in time. `timeout_s`
        default: Prefect's PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS if set, else 60."""
        if self._healthy:
            return
        import urllib.request  # here, not at the launch, which comes first in a command

        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no HTTP(S)_PROXY for 127.0.0.1
        if timeout_s is None:
            timeout_s = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 60)
        deadline = time.monotonic() + timeout_s
        while self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError), direct.open(f"{self.url}/health", timeout=2) as answer:
                if answer.status == 200:
                    self._healthy = True
                    self._reserved.close()
                    self._said_before = self._stderr.tell()  # where its output during the command starts
                    return
            if time.monotonic() > deadline:
                self._fail(f"did not answer at {self.url}/health within {timeout_s:g} s")
            time.sleep(0.1)
        code = None if self.proc is None else self.proc.returncode
        self._fail(f"exited with code {code} before answering at {self.url}")

    def _fail(self, what: str) -> None:
        tail = self._what_it_said()
        self.stop()
        raise VitalStreamError(
            f"Prefect's local API server (started because no PREFECT_API_URL is configured) {what}"
            + (f" (it said: {tail})" if tail else " (it printed nothing)")
            + f"; {_HINT}"
        )

    def _what_it_said(self, chars: int = 500) -> str:
        """The server's error output in one line: its log messages and each traceback's last line (the
        exception), without the frames or Prefect's log prefix; the start of it when long."""
        self._stderr.seek(0)
        kept: list[str] = []
        for line in self._stderr.read().decode(errors="replace").splitlines():
            line = re.sub(r"^[\d:.]+ \| \w+ +\| [\w.]+ - ", "", line)  # "05:06:56.631 | ERROR   | uvicorn.error - "
            if line.strip() and not line[0].isspace() and not line.startswith(_NOT_SAID) and line not in kept:
                kept.append(line.strip())
        text = " | ".join(kept)
        return text if len(text) <= chars else text[:chars] + "..."

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s, as Prefect does); safe to call twice. What it
        printed after it answered (errors only: --log-level error) goes to this process's stderr, as it would
        have from Prefect's own launcher."""
        atexit.unregister(self.stop)
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reserved.close()
        if self._healthy and not self._stderr.closed:
            self._stderr.seek(self._said_before)
            if said := self._stderr.read().decode(errors="replace"):
                sys.stderr.write(said)
        self._stderr.close()


@contextlib.contextmanager
def started() -> Iterator[LocalServer | None]:
    """A LocalServer, with PREFECT_API_URL pointing at it for the block, where Prefect would otherwise start
    its temporary server in this process; None (nothing started) where it would not. Call `ready()` before
    the first flow. Stopped when the block ends, or, once Prefect is imported (it then holds the URL), at the
    interpreter's exit, after Prefect's own exit handlers."""
    if "prefect" in sys.modules or not prefect_would_start_a_server():
        yield None
        return
    server = LocalServer()
    before = os.environ.get("PREFECT_API_URL")  # unset, or set empty
    os.environ["PREFECT_API_URL"] = server.url
    try:
        yield server
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
        if "prefect" not in sys.modules:
            server.stop()
        # else Prefect, imported in the block, keeps this server as its API until the interpreter exits: its
        # exit handlers send the last logs and events, then `atexit` stops the server (as Prefect's own).


def prefect_would_start_a_server(cwd: Path | None = None) -> bool:
    """Whether Prefect, imported now, would start a temporary server: no API URL in the environment or the
    active profile, and ephemeral mode on (the default profile's). False, to leave the choice to Prefect,
    where a file of the working directory may hold Prefect settings."""
    env = os.environ
    if env.get("PREFECT_API_URL") or env.get("PREFECT_TEST_MODE") or _settings_in_working_directory(cwd or Path()):
        return False
    profile = _active_profile()
    if profile.get("PREFECT_API_URL"):
        return False
    enabled: Any = next(
        (
            source[name]
            for source in (env, profile)
            for name in ("PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE")
            if source.get(name) not in (None, "")
        ),
        False,
    )
    return str(enabled).strip().lower() in _TRUE


def _settings_in_working_directory(cwd: Path) -> bool:
    if (cwd / "prefect.toml").exists():
        return True
    dotenv = cwd / ".env"
    if dotenv.is_file() and "PREFECT_" in dotenv.read_text(errors="replace"):
        return True
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        try:
            return "prefect" in tomllib.loads(pyproject.read_text()).get("tool", {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            return True  # Prefect would warn about it: its call
    return False


def _active_profile() -> dict[str, Any]:
    """The active profile's settings, chosen as Prefect's settings loader chooses them
    (prefect/settings/sources.py, ProfileSettingsTomlLoader): the file PREFECT_PROFILES_PATH names, else
    $PREFECT_HOME/profiles.toml, else ~/.prefect/profiles.toml if it exists; in it, the profile
    PREFECT_PROFILE names, else the file's `active`; Prefect's default profile when that file or profile
    does not exist."""
    env = os.environ
    default = Path(_prefect_dir()) / "settings" / "profiles.toml"
    if env.get("PREFECT_PROFILES_PATH"):
        path = Path(env["PREFECT_PROFILES_PATH"])
    elif env.get("PREFECT_HOME"):
        path = Path(env["PREFECT_HOME"]) / "profiles.toml"
    else:
        path = Path.home() / ".prefect" / "profiles.toml"
    try:
        data = tomllib.loads(path.read_text()) if path.exists() else {}
        active = env.get("PREFECT_PROFILE") or data.get("active")
        if active not in data.get("profiles", {}):
            data = tomllib.loads(default.read_text())
            active = data.get("active", "ephemeral")
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {"PREFECT_API_URL": "?"}  # Prefect warns about a file it cannot read: leave the choice to it
    return dict(data.get("profiles", {}).get(active, {}))


def _prefect_dir() -> str:
    """Prefect's package directory, found without importing it."""
    spec = find_spec("prefect")
    if spec is None or not spec.submodule_search_locations:
        raise VitalStreamError("Prefect is not installed (pip install prefect)")
    return str(next(iter(spec.submodule_search_locations)))
