"""What a consumer costs while it waits for messages, by fetch wait (runtime.wiring.FETCH_WAIT_MS).

    python bench/idle_fetch.py [--seconds 15]

Starts the embedded broker with empty topics, then for each fetch wait (100 ms, as until-idle and drain runs
use; 400 ms, as follow runs use) polls a StreamConsumer for `--seconds`, as the consumer process does while
a live run idles, and prints the polls made and the CPU the polling process used (user + system; the broker
is another process). A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args()

    from pipeline.kafka_io import StreamConsumer, ensure_topics
    from pipeline.kafka_settings import KafkaSettings
    from sim.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap)
        ensure_topics(settings)
        for wait_ms in (100, 400, 100, 400):
            consumer = StreamConsumer(
                dataclasses.replace(settings, fetch_max_wait_ms=wait_ms), group=f"idle-{time.time_ns()}"
            )
            try:
                consumer.wait_for_assignment(timeout_s=30)
                consumer.poll_batch()
                r0, t0, polls = resource.getrusage(resource.RUSAGE_SELF), time.monotonic(), 0
                while time.monotonic() - t0 < args.seconds:
                    consumer.poll_batch()
                    consumer.lagging()
                    polls += 1
                r1 = resource.getrusage(resource.RUSAGE_SELF)
            finally:
                consumer.close()
            cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
            print(
                f"fetch wait {wait_ms:>3} ms: {polls / args.seconds:5.1f} empty polls/s, "
                f"{cpu:.2f} s CPU in {args.seconds:g} s ({100 * cpu / args.seconds:.1f} % of a core)"
            )


if __name__ == "__main__":
    main()
