"""What the benches measure processes with: a sampler of a process tree's memory and CPU (from /proc, Linux),
and a `prefect server start` to run flows against, as a deployment would. Shared by bench/throughput.py and
bench/startup.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

PREFECT_SERVER = "Prefect local server"


class RssSampler(threading.Thread):
    """Samples the resident memory of a process tree from /proc (Linux): the peak of each process, and the
    peak of the tree's sum (scoring process + consumer process + Prefect's temporary local server, which a
    deployment would run once, elsewhere). Memory every 10 ms from /proc/<pid>/statm (one small read per
    process); the tree and the CPU times every 250 ms, because walking every thread's children file 100
    times a second cost the run measurable CPU on 2 cores. Its own CPU time is reported."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self.stop = pid, 0, threading.Event()
        self.peak_run_kib = 0  # the run's own processes: all but Prefect's temporary server
        self.by_process: dict[str, int] = {}  # role -> peak KiB
        self.roles: dict[int, str] = {}  # pid -> role, once the process runs its own program
        self.cpu_ticks: dict[int, int] = {}  # pid -> user + system clock ticks, last seen
        self.own_cpu_s = 0.0

    def run(self) -> None:
        root_cmd = _cmdline(self.pid)
        page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
        i = 0
        while not self.stop.wait(0.01):
            if i % 25 == 0:
                for p in _tree(self.pid):
                    # A child caught between fork and exec still shows the parent's command line and shares
                    # its pages: not counted until it runs its own program.
                    if p not in self.roles and (p == self.pid or _cmdline(p) != root_cmd):
                        self.roles[p] = "scoring process" if p == self.pid else _role(p)
                    if p in self.roles and (ticks := _cpu_ticks(p)):
                        self.cpu_ticks[p] = ticks
            i += 1
            total = own = 0
            for p, role in self.roles.items():
                kib = _statm_rss_pages(p) * page_kib
                total += kib
                own += 0 if role == PREFECT_SERVER else kib
                self.by_process[role] = max(self.by_process.get(role, 0), kib)
            self.peak_kib = max(self.peak_kib, total)
            self.peak_run_kib = max(self.peak_run_kib, own)
        self.own_cpu_s = time.thread_time()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) per role, as last seen (every 250 ms) before each process ended."""
        out: dict[str, float] = {}
        for p, ticks in self.cpu_ticks.items():
            role = self.roles[p]
            out[role] = out.get(role, 0.0) + ticks / os.sysconf("SC_CLK_TCK")
        return out


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in task.read_text().split())
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _role(pid: int) -> str:
    cmd = _cmdline(pid)
    if "consumer_process" in cmd:
        return "consumer process"
    return PREFECT_SERVER if "prefect" in cmd or "uvicorn" in cmd else "other"


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0


def _statm_rss_pages(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """`prefect server start` on a free port; yields its API URL once it answers."""
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
