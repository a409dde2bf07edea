"""Alerts per patient-day on the simulated cohort, or on a real tidy recording, with an alert policy
(default: the shipped one).

    python bench/alert_rate.py [--patients 120] [--hours 8] [--seed 3] [--policy FILE]
    python bench/alert_rate.py --csv ../shared/data/mimic3_demo/readings.csv.gz [--batch 2000] [--policy FILE]

Simulates patients (the four profiles, injected episodes and sensor dropouts, no delivery faults), feeds
their messages through the engine in 10-minute micro-batches (decode, windows, the shipped model, the alert
lifecycle) and classifies every raised alert against the simulator's ground truth: a clinical alert is
explained when an event of its condition (any condition for `deterioration`, hypoglycaemia for
`predicted_low_glucose`) for the same patient spans [onset - 60 min, end + 30 min] around the raise;
otherwise it is raised outside real events. `sensor_silent` alerts are counted apart (the simulator drops
sensors for 5-20 minutes: real silences, not adverse events). Prints the figures; asserts nothing.

With `--csv`, a tidy recording (`vitalstream replay --csv` reads the same files) goes through the same
engine in its own event times, `--batch` messages at a time in event-time order, as the live consumer
fetches them. It prints raised alerts per condition per monitored patient-day (the time between a
patient's consecutive readings, gaps over 12 h left out: charted ICU stays of one patient can lie years
apart), then classifies them as above against the recording's own threshold events
(`sim.simulate.detect_events` on its readings, the labels the model is judged by). Both runs also count, per
condition, the events with an alert in the hour before their onset.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOOKAHEAD_MS = 60 * 60_000  # the model's horizon: an alert may precede its event by this much
AFTER_MS = 30 * 60_000  # or come while it lasts and shortly after
MATCH = {
    "deterioration": None,
    "predicted_low_glucose": "hypoglycaemia",
    "glucose_low": "hypoglycaemia",
    "heart_rate_high": "cardiac",
    "heart_rate_low": "cardiac",
    "respiration_high": "respiratory",
    "respiration_low": "respiratory",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=120)
    ap.add_argument("--hours", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--policy", type=Path)
    ap.add_argument("--csv", type=Path, help="a tidy recording instead of the simulator")
    ap.add_argument("--batch", type=int, default=2000, help="messages per engine batch with --csv")
    args = ap.parse_args()
    if args.csv:
        _recording(args)
        return
    import pyarrow as pa

    from models.lstm import load_checkpoint
    from models.scorer import Scorer
    from pipeline.alert_policy import load_policy
    from runtime.engine import Engine, EngineConfig
    from sim.simulate import SimulationConfig, encode, simulate

    cfg = SimulationConfig(
        patients=args.patients,
        hours=args.hours,
        seed=args.seed,
        start_ms=1_795_305_600_000,
        out_of_order_rate=0.0,
        very_late_rate=0.0,
        duplicate_rate=0.0,
        malformed_rate=0.0,
    )
    sim = simulate(cfg)
    policy = load_policy(args.policy)
    engine = Engine(EngineConfig(alert_policy=policy), Scorer(load_checkpoint()))
    started = time.perf_counter()
    alerts = _feed(engine, encode(sim, slice_s=600.0))
    seconds = time.perf_counter() - started
    days = args.patients * args.hours / 24
    print(f"alert rate: {args.patients} patients x {args.hours:g} h = {days:.1f} patient-days, seed {args.seed}, "
          f"policy {policy.version}; {len(sim.readings):,} readings through the engine in {seconds:.0f} s")  # fmt: skip
    _report(pa.concat_tables(alerts), sim.events, days, "the simulator drops sensors for 5-20 min")


def _report(table: Any, events: Any, days: float, silences: str) -> None:
    """Raised alerts around the ground-truth `events` and outside them, per condition and patient-day."""
    rows = table.to_pylist()
    raised = [r for r in rows if r["state"] == "raised" and r["condition"] != "sensor_silent"]
    hit = _explained(raised, events)
    outside: Counter[str] = Counter(a["condition"] for a, h in zip(raised, hit, strict=True) if not h)
    explained: Counter[str] = Counter(a["condition"] for a, h in zip(raised, hit, strict=True) if h)
    numbers: dict[str, list[tuple[float, float]]] = {}  # outside real events: (value, evidence)
    for a, h in zip(raised, hit, strict=True):
        if not h:
            numbers.setdefault(a["condition"], []).append((a["value"], a["evidence"]))
    silent = Counter(r["stream"] for r in rows if r["state"] == "raised" and r["condition"] == "sensor_silent")
    print(f"  ground-truth events: {dict(sorted(Counter(events.column('condition').to_pylist()).items()))}")
    print(f"  raised outside real events: {sum(outside.values())} ({sum(outside.values()) / days:.2f} per patient-day)")
    for c, n in sorted(outside.items()):
        value, evidence = (_median(x) for x in zip(*numbers[c], strict=True))
        print(f"    {c:<24}{n:>6}  ({n / days:.2f} per patient-day; median value {value}, evidence {evidence})")
    print(f"  raised around real events:  {sum(explained.values())} {dict(sorted(explained.items()))}")
    warned = _warned(raised, events)
    each = [f"{c} {w}/{n}" + (f" ({lead:.0f} min)" if w else "") for c, (w, n, lead) in sorted(warned.items())]
    print("  events with an alert of their condition (or deterioration) in the hour before onset (falls: at it),"
          " and the median minutes from the first such alert to onset:", ", ".join(each))  # fmt: skip
    print(f"  sensor_silent raised:       {sum(silent.values())} {dict(sorted(silent.items()))} "
          f"({sum(silent.values()) / days:.2f} per patient-day; {silences})")  # fmt: skip
    states = Counter(f"{r['condition']}:{r['state']}" for r in rows)
    print(f"  all events by condition:state: {dict(sorted(states.items()))}")


def _warned(raised: list[dict[str, Any]], events: Any) -> dict[str, tuple[int, int, float]]:
    """Per event condition: (events with an alert raised for the same patient in [onset - LOOKAHEAD_MS,
    onset] whose condition speaks to it (MATCH; `deterioration` to any), events, the median minutes from the
    first such alert to onset over those events)."""
    import numpy as np
    import pyarrow as pa

    condition = np.asarray(events.column("condition").to_pylist(), dtype=object)
    out = {c: (0, int((condition == c).sum()), float("nan")) for c in set(condition.tolist())}
    if not raised or not len(events):
        return out
    a_code, e_code, t = _coded(raised, events)
    onset = events.column("onset").cast(pa.int64()).to_numpy()
    base = int(min(t.min(), onset.min()) - LOOKAHEAD_MS)
    span = int(max(t.max(), onset.max()) - base + 1)
    wants = np.asarray([MATCH.get(a["condition"], a["condition"]) or "" for a in raised], dtype=object)
    for c in out:
        speaks = np.flatnonzero((wants == c) | (wants == ""))
        key = np.sort(a_code[speaks] * span + (t[speaks] - base))
        rows = condition == c
        q = e_code[rows] * span + (onset[rows] - base)
        first = np.searchsorted(key, q - LOOKAHEAD_MS, side="left")  # the earliest alert in the hour before
        hit = np.searchsorted(key, q, side="right") > first
        lead = (q[hit] - key[first[hit]]) / 60_000
        out[c] = (int(hit.sum()), int(rows.sum()), float(np.median(lead)) if hit.any() else float("nan"))
    return out


def _coded(raised: list[dict[str, Any]], events: Any) -> tuple[Any, Any, Any]:
    """Patient codes shared by the alerts and the events (alerts', events'), and the alerts' event times (ms)."""
    import numpy as np
    import pyarrow as pa

    from pipeline.readings import shared_codes

    a_code, e_code = shared_codes(pa.array([a["patient_id"] for a in raised], pa.string()), events.column("patient_id"))
    t = np.array([a["event_time"].timestamp() * 1000 for a in raised], dtype=np.int64)
    return a_code, e_code, t


def _explained(raised: list[dict[str, Any]], events: Any) -> list[bool]:
    """Per raised alert: is there an event of its condition (MATCH) for the same patient from LOOKAHEAD_MS
    before its onset to AFTER_MS after its end around the alert's event time? Sorted intervals and a running
    maximum of their ends per patient, no loop per event."""
    import numpy as np
    import pyarrow as pa

    out = np.zeros(len(raised), dtype=bool)
    if not raised or not len(events):
        return out.tolist()
    a_code, e_code, t = _coded(raised, events)
    start = events.column("onset").cast(pa.int64()).to_numpy() - LOOKAHEAD_MS
    end = events.column("end").cast(pa.int64()).to_numpy() + AFTER_MS
    span = int(max(end.max(), t.max()) - min(start.min(), t.min()) + 1)
    base = int(min(start.min(), t.min()))
    condition = np.asarray(events.column("condition").to_pylist(), dtype=object)
    wants = np.asarray([MATCH.get(a["condition"], a["condition"]) or "" for a in raised], dtype=object)
    for want in set(wants.tolist()):
        rows = np.flatnonzero(wants == want)
        pick = np.ones(len(condition), bool) if want == "" else condition == want
        if not pick.any():
            continue
        key = e_code[pick] * span + (start[pick] - base)
        order = np.argsort(key, kind="stable")
        reach = np.maximum.accumulate((e_code[pick] * span + (end[pick] - base))[order])
        q = a_code[rows] * span + (t[rows] - base)
        j = np.searchsorted(key[order], q, side="right") - 1  # the last interval starting at or before
        out[rows] = (j >= 0) & (reach[np.maximum(j, 0)] >= q)
    return out.tolist()


def _feed(engine: Any, chunks: Iterable[list[Any]]) -> list[Any]:
    """Each chunk of messages through the engine as one batch per stream (Kafka offsets counted per stream),
    then a drain; the alert tables it emitted."""
    import numpy as np

    from pipeline.batch import RawBatch

    offsets: Counter[str] = Counter()
    alerts = []
    for chunk in chunks:
        by_stream: dict[str, list[Any]] = {}
        for m in chunk:
            by_stream.setdefault(m.stream, []).append(m)
        raw = []
        for stream, msgs in by_stream.items():
            n = len(msgs)
            raw.append(
                RawBatch(
                    stream=stream,
                    topic=f"vitals.{stream}",
                    keys=[m.key for m in msgs],
                    values=[m.value for m in msgs],
                    partitions=np.zeros(n, np.int32),
                    offsets=np.arange(offsets[stream], offsets[stream] + n, dtype=np.int64),
                    timestamps_ms=np.array([m.timestamp_ms for m in msgs], np.int64),
                )
            )
            offsets[stream] += n
        alerts.append(engine.process(raw).alerts)
    alerts.append(engine.process([], drain=True).alerts)
    return alerts


def _recording(args: argparse.Namespace) -> None:
    import pyarrow as pa

    from models.cohorts import tidy_readings
    from models.lstm import load_checkpoint
    from models.scorer import Scorer
    from pipeline.alert_policy import load_policy
    from runtime.engine import Engine, EngineConfig
    from sim.replay import read_tidy, tidy_messages
    from sim.simulate import detect_events

    frame = read_tidy(args.csv)
    days, patients = _monitored_days(frame), frame["subject"].nunique()
    messages = tidy_messages(frame)
    policy = load_policy(args.policy)
    engine = Engine(EngineConfig(alert_policy=policy), Scorer(load_checkpoint()))
    started = time.perf_counter()
    alerts = _feed(engine, (messages[i : i + args.batch] for i in range(0, len(messages), args.batch)))
    seconds = time.perf_counter() - started
    print(f"alert rate on {args.csv}: {patients} patients, {days:.1f} monitored patient-days, policy "
          f"{policy.version}; {len(messages):,} messages through the engine in {seconds:.0f} s")  # fmt: skip
    table = pa.concat_tables(alerts)
    raised = Counter(
        f"{r['condition']}:{r['stream']}" if r["stream"] else r["condition"]
        for r in table.to_pylist()
        if r["state"] == "raised"
    )
    print(f"  raised: {sum(raised.values())} ({sum(raised.values()) / days:.2f} per patient-day)")
    for c, n in sorted(raised.items()):
        print(f"    {c:<28}{n:>6}  ({n / days:.2f} per patient-day)")
    _report(table, detect_events(tidy_readings(frame)), days, "real silences")


def _monitored_days(frame: Any, max_gap_ms: int = 12 * 3_600_000) -> float:
    import numpy as np

    ordered = frame.sort_values(["subject", "event_ms"], kind="stable")
    t, subject = ordered["event_ms"].to_numpy(np.int64), ordered["subject"].to_numpy()
    gap = np.diff(t)
    return float(gap[(subject[1:] == subject[:-1]) & (gap <= max_gap_ms)].sum()) / 86_400_000


def _median(values: tuple[float | None, ...]) -> str:
    known = sorted(v for v in values if v is not None)
    return f"{known[len(known) // 2]:.3g}" if known else "-"


if __name__ == "__main__":
    main()
