"""End-to-end throughput and peak memory, beside a bare kafka-python consumer on the same messages.

    python bench/throughput.py [--patients 10000] [--hours 0.2] [--partitions 3]

1. starts the embedded broker and produces the simulated patients' messages (not timed);
2. a bare kafka-python consumer reads every message (child process; messages/s);
3. `vitalstream run --drain` scores them into a fresh lake (child process; readings/s over the flow's
   consuming time, wall time including Prefect start-up, and peak RSS per process, sampled every 10 ms).
Prints one table. A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BARE = r"""
import sys, time
from kafka import KafkaConsumer, TopicPartition
bootstrap, total = sys.argv[1], int(sys.argv[2])
c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=50000,
                  max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
tps = [TopicPartition(t, p) for t in c.topics() if t.startswith("vitals.") for p in c.partitions_for_topic(t)]
c.assign(tps); c.seek_to_beginning()
n, t0 = 0, time.perf_counter()
while n < total:
    for recs in c.poll(timeout_ms=1000).values():
        for r in recs:
            n += 1  # touch every record, as a real consumer would
print(n / (time.perf_counter() - t0))
"""


class RssSampler(threading.Thread):
    """Samples the resident memory of a process tree from /proc (Linux) every 10 ms: the peak of the root
    process, and the peak of the tree's sum (scoring process + consumer process + quality helper + Prefect's
    local server, which a deployment would run once, elsewhere)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self.stop = pid, 0, threading.Event()
        self.by_process: dict[str, int] = {}  # role -> peak KiB
        self.cpu_ticks: dict[int, tuple[str, int]] = {}  # pid -> (role, user + system clock ticks, last seen)

    def run(self) -> None:
        root_cmd = _cmdline(self.pid)
        while not self.stop.wait(0.01):
            # A child caught between fork and exec still shows the parent's command line and shares its
            # pages: not counted.
            rss = {p: _rss_kib(p) for p in _tree(self.pid) if p == self.pid or _cmdline(p) != root_cmd}
            self.peak_kib = max(self.peak_kib, sum(rss.values()))
            for p, kib in rss.items():
                role = "scoring process" if p == self.pid else _role(p)
                self.by_process[role] = max(self.by_process.get(role, 0), kib)
                ticks = _cpu_ticks(p)
                if ticks:
                    self.cpu_ticks[p] = (role, ticks)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) per role, as last seen before each process ended."""
        out: dict[str, float] = {}
        for role, ticks in self.cpu_ticks.values():
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
    for needle, role in (("consumer_process", "consumer process"), ("pipeline.quality", "quality helper (GE)")):
        if needle in cmd:
            return role
    return "Prefect local server" if "prefect" in cmd or "uvicorn" in cmd else "other"


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--hours", type=float, default=0.2)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from pipeline.broker import EmbeddedBroker
    from pipeline.kafka_io import KafkaSettings, ensure_topics, produce, producer
    from pipeline.simulate import SimulationConfig, encode, simulate

    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        kafka = KafkaSettings(broker.bootstrap, partitions=args.partitions)
        ensure_topics(kafka)
        t0 = time.perf_counter()
        sim = simulate(SimulationConfig(patients=args.patients, hours=args.hours, seed=args.seed))
        prod = producer(kafka)
        sent = sum(produce(prod, kafka, chunk) for chunk in encode(sim))
        prod.close()
        print(
            f"produced {sent:,} messages ({args.patients:,} patients x {args.hours} h) "
            f"in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

        bare = float(
            subprocess.run(
                [sys.executable, "-c", BARE, broker.bootstrap, str(sent)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )

        env = {
            **os.environ,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "VITALSTREAM_PARTITIONS": str(args.partitions),
        }
        summary_file = Path(tmp) / "summary.json"
        code = (
            "import json, sys\n"
            "from pipeline.config import load_settings\n"
            "from flows.scoring import scoring_flow\n"
            "s = load_settings().with_overrides(lake=sys.argv[2], group='bench')\n"
            "json.dump(scoring_flow(s, sys.argv[1], mode='drain'), open(sys.argv[3], 'w'), default=str)\n"
        )
        w0 = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-c", code, broker.bootstrap, str(Path(tmp) / "lake"), str(summary_file)],
            env=env,
            cwd=ROOT,
        )
        sampler = RssSampler(child.pid)
        sampler.start()
        _, status, _ = os.wait4(child.pid, 0)
        sampler.stop.set()
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            raise SystemExit(f"scoring run failed with exit code {child.returncode}")
        wall = time.perf_counter() - w0
        s = json.loads(summary_file.read_text())
        e2e = s["consumed"] / s["seconds"]
        print()
        print(f"{'bare kafka-python consumer':<38}{bare:>12,.0f} messages/s")
        print(f"{'end to end (decode..Parquet, in flow)':<38}{e2e:>12,.0f} readings/s   ({e2e / bare:.2f} x bare)")
        print(
            f"{'end to end incl. Prefect start-up':<38}{s['consumed'] / wall:>12,.0f} readings/s   (wall {wall:.1f} s)"
        )
        for role, kib in sorted(sampler.by_process.items(), key=lambda kv: -kv[1]):
            if kib < 64 * 1024 and role == "other":
                continue  # short-lived helpers (a shell, a compiler probe)
            print(f"{'peak RSS, ' + role:<38}{kib / 1024:>12,.0f} MiB")
        print(f"{'peak RSS, all of them at once':<38}{sampler.peak_kib / 1024:>12,.0f} MiB")
        for role, sec in sorted(sampler.cpu_seconds().items(), key=lambda kv: -kv[1]):
            if sec >= 0.5:
                print(f"{'CPU time, ' + role:<38}{sec:>12,.1f} s")
        print(
            f"{'consumed / windows / quarantined':<38}{s['consumed']:>12,} / {s['windows']:,} / "
            f"{sum(s['quarantined'].values()):,}   balanced={s['balanced']}"
        )


if __name__ == "__main__":
    main()
