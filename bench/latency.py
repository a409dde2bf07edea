"""Live latency: from the reading that closes a window to its message on the risk topic, and from a fall
reading to its alert, with `vitalstream run --follow` scoring simulated patients sent in real time.

    python bench/latency.py [--patients 200] [--seconds 420] [--backfill-minutes 12]

An embedded broker; simulated patients whose first `--backfill-minutes` are produced at once (context for the
model), the rest sent as the wall clock reaches each message's arrival time, for `--seconds`; a fall reading
of a new patient every 10 s. The scorer is the real CLI in its own process (its Prefect flow, the consumer
process, the shipped model), stopped with SIGTERM at the end.

Risk delay: a window [s, e) can close once the watermark passes e + allowed lateness, i.e. once every
partition holding the watermark (all but the idle ones, as pipeline.window rules) has delivered a reading at
or past that event time; the delay runs from the Kafka timestamp of the send that moved the watermark there
(the reading that closes the window) to the Kafka timestamp of the window's risk message. Fall delay: from
the fall reading's Kafka timestamp to its `raised` alert's. Only windows closed by readings of the
real-time phase count. Prints p50, p99 and max; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTITIONS = 3
PREFIX = "lat."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=420.0)
    ap.add_argument("--backfill-minutes", type=float, default=12.0)
    args = ap.parse_args()
    import numpy as np
    from kafka.partitioner.default import murmur2

    from pipeline.config import Settings
    from pipeline.kafka_io import ensure_topics
    from pipeline.kafka_publish import producer
    from pipeline.kafka_settings import KafkaSettings
    from sim.broker import EmbeddedBroker
    from sim.simulate import SimulationConfig, encode, simulate

    lateness_ms = int(Settings().allowed_lateness_minutes * 60_000)
    window_ms = int(Settings().window_minutes * 60_000)
    idle_ms = int(Settings().idle_timeout_minutes * 60_000)
    start_ms = int(time.time() * 1000) - int(args.backfill_minutes * 60_000)
    hours = (args.backfill_minutes * 60 + args.seconds + 60) / 3600
    cfg = SimulationConfig(patients=args.patients, hours=hours, seed=5, start_ms=start_ms, malformed_rate=0.0)
    messages = [m for chunk in encode(simulate(cfg)) for m in chunk]

    def partition(key: bytes) -> int:
        return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS

    high: dict[tuple[str, int], int] = {}  # (topic, partition) -> largest event time sent
    history: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)  # (Kafka timestamp, high) steps
    fall_sent: dict[str, int] = {}  # injected fall's patient -> Kafka timestamp

    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as lake:
        kafka = KafkaSettings(broker.bootstrap, topic_prefix=PREFIX, partitions=PARTITIONS)
        ensure_topics(kafka)
        prod = producer(kafka)

        def send(batch: list, now_ms: int) -> None:
            for m in batch:
                p = partition(m.key)
                prod.send(kafka.topic(m.stream), key=m.key, value=m.value, partition=p, timestamp_ms=now_ms)
                tp = (m.stream, p)
                high[tp] = max(high.get(tp, 0), _event_ms(m.value))
            prod.flush()
            for tp in {(m.stream, partition(m.key)) for m in batch}:
                history[tp].append((now_ms, high[tp]))

        now = int(time.time() * 1000)
        due = np.searchsorted([m.timestamp_ms for m in messages], now, side="right")
        send(messages[:due], now)  # the backfill, at once
        env = {**os.environ, "VITALSTREAM_TOPIC_PREFIX": PREFIX, "VITALSTREAM_PARTITIONS": str(PARTITIONS)}
        cmd = [sys.executable, "-m", "cli.main", "run", "--bootstrap", broker.bootstrap, "--lake", lake, "--follow"]
        scorer = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(25)  # Prefect's temporary server, the group join, the backfill
            live_from = int(time.time() * 1000)
            until = time.monotonic() + args.seconds
            next_fall, falls = time.monotonic(), 0
            while time.monotonic() < until:
                now = int(time.time() * 1000)
                upto = int(np.searchsorted([m.timestamp_ms for m in messages[due : due + 5000]], now, side="right"))
                batch, due = messages[due : due + upto], due + upto
                if time.monotonic() >= next_fall:
                    falls += 1
                    pid = f"F{falls:05d}"
                    body = {"patient_id": pid, "device_id": f"fall-{pid}", "ts": now, "fall_detected": True}
                    fall = json.dumps(body | {"confidence": 0.95, "impact_g": 3.0}).encode()
                    batch = [*batch, type(messages[0])("fall", pid.encode(), fall, now)]
                    fall_sent[pid] = now
                    next_fall += 10
                if batch:
                    send(batch, now)
                time.sleep(0.05)
            time.sleep(10)
        finally:
            scorer.send_signal(signal.SIGTERM)
            log, _ = scorer.communicate(timeout=120)
            prod.close()
        risk = _read(broker.bootstrap, kafka.risk_topic())
        alerts = _read(broker.bootstrap, kafka.alerts_topic())

    # When each window could close: every partition that holds the watermark has passed window end + lateness.
    closes: dict[int, int | None] = {}
    steps = _watermark_steps(history, idle_ms)
    for _, value in risk:
        end = _iso_ms(value["window_end"])
        if end not in closes:
            closes[end] = _closing_time(steps, end + lateness_ms)
    delays, moments = [], set()
    for ts, value in risk:
        closed = closes[_iso_ms(value["window_end"])]
        if closed is not None and closed >= live_from:
            delays.append((ts - closed) / 1000)
            moments.add(value["window_end"])
    fall_delays = [
        (ts - fall_sent[v["patient_id"]]) / 1000
        for ts, v in alerts
        if v["condition"] == "fall" and v["state"] == "raised" and v["patient_id"] in fall_sent
    ]
    print(f"latency: {args.patients} patients in real time for {args.seconds:.0f} s after a "
          f"{args.backfill_minutes:g}-minute backfill; window {window_ms // 60_000} min, lateness "
          f"{lateness_ms // 60_000} min; scorer exit {scorer.returncode}")  # fmt: skip
    _report("risk: window can close -> risk message", delays, f"over {len(moments)} window ends")
    _report("fall: fall reading -> raised alert", fall_delays, f"of {len(fall_sent)} injected falls")
    if scorer.returncode != 0:
        print(log[-3000:])


def _report(what: str, delays: list[float], note: str) -> None:
    import numpy as np

    if not delays:
        print(f"  {what}: no samples ({note})")
        return
    d = np.asarray(delays)
    print(f"  {what}: n={len(d)} {note}; p50 {np.percentile(d, 50):.2f} s, p99 {np.percentile(d, 99):.2f} s, "
          f"max {d.max():.2f} s")  # fmt: skip


def _watermark_steps(history: dict, idle_ms: int) -> tuple[list[int], list[int]]:
    """(Kafka timestamp, watermark) after each send, by the engine's rule: the smallest high-water mark among
    the partitions within `idle_ms` of the leading one (an idle partition does not hold it); never back."""
    sends = sorted((ts, tp, high) for tp, steps in history.items() for ts, high in steps)
    highs: dict = {}
    times, marks, mark = [], [], None
    for i, (ts, tp, high) in enumerate(sends):
        highs[tp] = high
        if i + 1 < len(sends) and sends[i + 1][0] == ts:
            continue  # one send, several partitions
        lead = max(highs.values())
        now = min(h for h in highs.values() if h >= lead - idle_ms)
        mark = now if mark is None else max(mark, now)
        times.append(ts)
        marks.append(mark)
    return times, marks


def _closing_time(steps: tuple[list[int], list[int]], event_ms: int) -> int | None:
    """Kafka timestamp of the send that moved the watermark to `event_ms` or past it."""
    import bisect

    times, marks = steps
    i = bisect.bisect_left(marks, event_ms)
    return times[i] if i < len(times) else None


def _event_ms(value: bytes) -> int:
    ts = json.loads(value)["ts"]
    return int(ts) if isinstance(ts, int | float) else _iso_ms(ts)


def _iso_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _read(bootstrap: str, topic: str) -> list[tuple[int, dict]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out, idle = [], 0
        while idle < 4:
            got = consumer.poll(timeout_ms=500)
            idle = 0 if got else idle + 1
            out += [(r.timestamp, json.loads(r.value)) for records in got.values() for r in records]
        return out
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
