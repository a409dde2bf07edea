"""End-to-end throughput and peak memory, beside a bare kafka-python consumer on the same messages.

    python bench/throughput.py [--shape bench|single] [--patients N] [--hours H] [--partitions P]
                               [--prefect-server]

Shapes: `bench` (the default: 10,000 patients x 0.2 h, four topics of 3 partitions, about 2.55 M messages)
and `single` (one topic, heart rate only: 2,000 patients x 0.31 h on 4 partitions, about 400,000 messages).
1. starts the embedded broker and produces the simulated patients' messages (not timed);
2. a bare kafka-python consumer reads every message (child process; messages/s and its CPU time);
3. the same consumer with the bulk decoder (pipeline/kafka_fetch.py) reads every message (child process);
4. `vitalstream run --drain` scores them into a fresh lake (child process; readings/s from the group's
   assignment to the last batch, as the bare consumer is timed from its first poll; then counting the
   consumer's start and the group join; wall time including Prefect's start-up; peak RSS and CPU time per
   process);
5. unless --no-validate, Great Expectations validates the run's samples as its own flow run.
Without a Prefect server configured, the run starts a local one as `vitalstream run` does (runtime.prefect_api;
counted apart); `--prefect-server` runs the flow against `prefect server start` instead (PREFECT_API_URL set, as
under `vitalstream serve` or a work pool).
Prints one table, with ratios to the bare consumer of the same run. A benchmark, not a test: nothing here
asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from processes import RssSampler, prefect_server  # noqa: E402

BARE = r"""
import resource, sys, time
from kafka import KafkaConsumer, TopicPartition
bootstrap, total, bulk = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "bulk"
c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=50000,
                  max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
if bulk:
    from pipeline import kafka_fetch
    kafka_fetch.install(c)  # poll() hands out RecordColumns: offsets, timestamps, keys and values as columns
tps = [TopicPartition(t, p) for t in c.topics() if t.startswith("vitals.") for p in c.partitions_for_topic(t)]
c.assign(tps); c.seek_to_beginning()
n, t0 = 0, time.perf_counter()
while n < total:
    for recs in c.poll(timeout_ms=1000).values():
        if bulk:
            n += sum(len(cols.values) for cols in recs)  # the columns a RawBatch is made of
        else:
            for r in recs:
                n += 1  # touch every record, as a real consumer would
u = resource.getrusage(resource.RUSAGE_SELF)
print(n / (time.perf_counter() - t0), u.ru_utime + u.ru_stime)
"""

# A child's program (%s: its body, which calls ready() before its flow), run as the CLI runs its flows.
WITH_API = """\
import json, sys
from runtime import prefect_api
with prefect_api.started() as api:
    ready = api.ready if api is not None else lambda: None
%s"""

SHAPES = {  # patients, hours, partitions, streams
    "bench": (10_000, 0.2, 3, None),
    "single": (2_000, 0.31, 4, {"heart_rate"}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="bench")
    ap.add_argument("--patients", type=int, help="default: the shape's")
    ap.add_argument("--hours", type=float, help="default: the shape's")
    ap.add_argument("--partitions", type=int, help="default: the shape's")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-validate", action="store_true", help="skip the Great Expectations flow run")
    ap.add_argument(
        "--prefect-server", action="store_true", help="run the flows against `prefect server start` (PREFECT_API_URL)"
    )
    args = ap.parse_args()
    patients, hours, partitions, streams = SHAPES[args.shape]
    args.patients = args.patients or patients
    args.hours = args.hours or hours
    args.partitions = args.partitions or partitions

    from pipeline.kafka_io import ensure_topics
    from pipeline.kafka_publish import produce, producer
    from pipeline.kafka_settings import KafkaSettings
    from sim.broker import EmbeddedBroker
    from sim.simulate import SimulationConfig, encode, simulate

    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        kafka = KafkaSettings(broker.bootstrap, partitions=args.partitions)
        ensure_topics(kafka)
        t0 = time.perf_counter()
        # Start on an hour boundary, so that every run has the same windows (the default start, "now minus
        # `hours`", moves the data across window edges from one run to the next: 30k to 38k windows).
        hour_ms = 3_600_000
        start_ms = int(time.time() * 1000) // hour_ms * hour_ms - int(args.hours * hour_ms)
        sim = simulate(SimulationConfig(patients=args.patients, hours=args.hours, seed=args.seed, start_ms=start_ms))
        prod = producer(kafka)
        sent = sum(
            produce(prod, kafka, [m for m in chunk if streams is None or m[0] in streams]) for chunk in encode(sim)
        )
        prod.close()
        print(
            f"produced {sent:,} messages ({args.patients:,} patients x {args.hours} h) "
            f"in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

        def consume(how: str) -> tuple[float, float]:
            out = subprocess.run(
                [sys.executable, "-c", BARE, broker.bootstrap, str(sent), how],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            ).stdout.split()
            return float(out[0]), float(out[1])

        bare, bare_cpu = consume("bare")
        bulk, bulk_cpu = consume("bulk")

        env = {
            **os.environ,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "VITALSTREAM_PARTITIONS": str(args.partitions),
        }
        server = contextlib.ExitStack()
        if args.prefect_server:
            home = Path(tmp) / "prefect-home"
            env |= {"PREFECT_API_URL": server.enter_context(prefect_server(home)), "PREFECT_HOME": str(home)}
        summary_file = Path(tmp) / "summary.json"
        # As `vitalstream run` does: Prefect's local server launched first when none is configured (WITH_API).
        code = WITH_API % (
            "    from pipeline.config import load_settings\n"
            "    from flows.scoring import scoring_flow\n"
            "    s = load_settings().with_overrides(lake=sys.argv[2], group='bench')\n"
            "    ready()\n"
            "    json.dump(scoring_flow(s, sys.argv[1], mode='drain'), open(sys.argv[3], 'w'), default=str)\n"
        )
        lake = str(Path(tmp) / "lake")
        wall, sampler = _sampled([sys.executable, "-c", code, broker.bootstrap, lake, str(summary_file)], env)
        s = json.loads(summary_file.read_text())
        # Great Expectations on the run's samples: its own flow run, as the `validate` deployment runs it.
        validate = WITH_API % (
            "    from flows.quality_report import validation_flow\n    ready()\n    validation_flow(lake=sys.argv[1])\n"
        )
        ge = None if args.no_validate else _sampled([sys.executable, "-c", validate, lake], env)
        server.close()
        e2e = s["consumed"] / (s["seconds"] - s["startup_s"])  # steady: from the group's assignment on
        print()
        print(f"{'bare kafka-python consumer':<38}{bare:>12,.0f} messages/s   (CPU {bare_cpu:.1f} s)")
        print(
            f"{'consumer with the bulk decoder':<38}{bulk:>12,.0f} messages/s   "
            f"({bulk / bare:.2f} x bare, CPU {bulk_cpu:.1f} s)"
        )
        print(f"{'end to end (decode..Parquet, in flow)':<38}{e2e:>12,.0f} readings/s   ({e2e / bare:.2f} x bare)")
        in_run = s["consumed"] / s["seconds"]
        print(
            f"{'  counting consumer start + group join':<38}{in_run:>12,.0f} readings/s   ({in_run / bare:.2f} x bare;"
            f" {s['startup_s']:.1f} s before the first poll)"
        )
        print(
            f"{'end to end incl. Prefect start-up':<38}{s['consumed'] / wall:>12,.0f} readings/s   (wall {wall:.1f} s)"
        )
        for role, kib in sorted(sampler.by_process.items(), key=lambda kv: -kv[1]):
            if kib < 64 * 1024 and role == "other":
                continue  # short-lived helpers (a shell, a compiler probe)
            print(f"{'peak RSS, ' + role:<38}{kib / 1024:>12,.0f} MiB")
        print(f"{'peak RSS, the run (scoring + consumer)':<38}{sampler.peak_run_kib / 1024:>12,.0f} MiB")
        print(f"{'peak RSS, all of them at once':<38}{sampler.peak_kib / 1024:>12,.0f} MiB")
        for role, sec in sorted(sampler.cpu_seconds().items(), key=lambda kv: -kv[1]):
            if sec >= 0.5:
                print(f"{'CPU time, ' + role:<38}{sec:>12,.1f} s")
        print(f"{'CPU time, this memory sampler':<38}{sampler.own_cpu_s:>12,.1f} s")
        if ge is not None:
            print(
                f"{'Great Expectations (own flow run)':<38}{ge[0]:>12,.1f} s wall, "
                f"peak RSS {ge[1].peak_kib / 1024:,.0f} MiB with its Prefect server"
            )
        state = Path(lake) / "_state"
        state_bytes = sum(f.stat().st_size for f in state.rglob("*") if f.is_file())  # the newest generation only
        from pipeline.config import Settings
        from runtime.checkpoint import FileCheckpoints

        saved = FileCheckpoints(Path(lake), "bench", Settings().window()).load()
        in_memory = (saved.history.nbytes + saved.window.open.nbytes) if saved is not None else 0
        print(
            f"{'state carried to the next run':<38}{in_memory / 2**20:>12,.1f} MiB   "
            f"({in_memory / args.patients:,.0f} bytes per patient in memory, "
            f"{state_bytes / args.patients:,.0f} on disk)"
        )
        print(
            f"{'consumed / windows / quarantined':<38}{s['consumed']:>12,} / {s['windows']:,} / "
            f"{sum(s['quarantined'].values()):,}   balanced={s['balanced']}"
        )
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(s["quarantined"].items(), key=lambda kv: -kv[1]))
        print(f"{'  quarantined by reason':<38}{reasons}")


def _sampled(cmd: list[str], env: dict[str, str]) -> tuple[float, RssSampler]:
    """Run a child with the memory sampler on its process tree; returns (wall seconds, sampler)."""
    w0 = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, cwd=ROOT)
    sampler = RssSampler(child.pid)
    sampler.start()
    _, status, _ = os.wait4(child.pid, 0)  # reaped only now: the sampler sees the process until it ends
    sampler.stop.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{cmd[:3]} failed with exit code {os.waitstatus_to_exitcode(status)}")
    return time.perf_counter() - w0, sampler


if __name__ == "__main__":
    main()
