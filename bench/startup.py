"""What a run that finds nothing costs: `vitalstream run` on empty topics, with and without a Prefect server.

    python bench/startup.py [--runs 2] [--no-server | --server-only]

1. starts the embedded broker and creates the (empty) topics;
2. times the consumer group join alone (the same consumer settings as a run; the broker decides it);
3. `vitalstream run` (a child process) that finds nothing, `--runs` times: wall time, the same minus the
   time the run itself waited for its consumer's start and group join (from its summary line; the target
   excludes the join, and the run overlaps it with its own start-up, so only the wait left after that
   overlap is subtracted: the join alone above can be longer than the whole run), CPU time of the run's
   whole process tree (user + system, its children included) and per process, and peak RSS of the tree,
   sampled as in bench/throughput.py. First with no Prefect server configured (the run starts a local one:
   runtime/prefect_api.py), then with `prefect server start` running and PREFECT_API_URL set, as under a
   deployment.
A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from processes import RssSampler, prefect_server  # noqa: E402


def run_once(env: dict[str, str], bootstrap: str, lake: Path) -> tuple[float, float, float, dict[str, float], float]:
    """(wall s, CPU s of the process tree, peak RSS MiB of the tree, CPU s per process, s the run waited for
    its consumer's start and group join, from its summary) of one `vitalstream run`."""
    cmd = [sys.executable, "-m", "cli.main", "run", "--bootstrap", bootstrap, "--lake", str(lake)]
    out = lake.with_name(lake.name + ".out")
    w0 = time.perf_counter()
    with out.open("w") as stdout:
        child = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=stdout)
        sampler = RssSampler(child.pid)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - w0
    from cli.main import JOIN_WAIT

    waited = re.search(rf"([0-9.]+) {re.escape(JOIN_WAIT)}", out.read_text())
    sampler.stop.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"vitalstream run failed with exit code {os.waitstatus_to_exitcode(status)}")
    # wait4's usage covers the child and the children it waited for (its consumer process; Prefect's
    # temporary server if it reaped it); the sampler's per-process figures catch any it did not
    cpu = max(usage.ru_utime + usage.ru_stime, sum(sampler.cpu_seconds().values()))
    return wall, cpu, sampler.peak_kib / 1024, sampler.cpu_seconds(), float(waited.group(1)) if waited else float("nan")


def group_join_s(bootstrap: str) -> float:
    from pipeline.kafka_io import StreamConsumer
    from pipeline.kafka_settings import KafkaSettings

    consumer = StreamConsumer(KafkaSettings(bootstrap), group=f"join-{time.time_ns()}")
    try:
        t0 = time.perf_counter()
        consumer.wait_for_assignment(timeout_s=60)
        return time.perf_counter() - t0
    finally:
        consumer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--no-server", action="store_true", help="skip the measurement with `prefect server start`")
    which.add_argument(
        "--server-only", action="store_true", help="only the measurement with `prefect server start` (the target's)"
    )
    args = ap.parse_args()

    from pipeline.kafka_io import ensure_topics
    from pipeline.kafka_settings import KafkaSettings
    from sim.broker import EmbeddedBroker

    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        ensure_topics(KafkaSettings(broker.bootstrap))
        join = group_join_s(broker.bootstrap)
        print(f"{'consumer group join alone':<44}{join:>8.1f} s")
        base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        base |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
        base["PYTHONPATH"] = str(ROOT)
        setups: list[tuple[str, dict[str, str] | None]] = []
        if not args.server_only:
            setups.append(("no Prefect server configured", None))
        if not args.no_server:
            setups.append(("with `prefect server start`", {}))
        for label, extra in setups:
            home = Path(tmp) / label.replace(" ", "_").replace("`", "")
            env = {**base, "PREFECT_HOME": str(home)}
            with prefect_server(home) if extra is not None else contextlib.nullcontext() as url:
                if url:
                    env["PREFECT_API_URL"] = url
                for i in range(args.runs):
                    wall, cpu, rss, per, waited = run_once(env, broker.bootstrap, Path(tmp) / f"lake-{label[:4]}")
                    by_process = ", ".join(f"{role} {s:.1f}" for role, s in sorted(per.items()))
                    print(
                        f"{'run that finds nothing, ' + label:<44}{wall:>8.1f} s wall ({wall - waited:.1f} s besides "
                        f"the {waited:.1f} s it waited for the join) {cpu:>6.1f} s CPU ({by_process}) "
                        f"{rss:>6,.0f} MiB peak   (run {i + 1})"
                    )


if __name__ == "__main__":
    main()
