"""Sensor configurations for training: what real devices send, applied to simulated readings.

Every simulated patient has every stream at a high rate; real patients have any subset of the four streams
and many wearables send one averaged value per interval. Plain functions over canonical readings (Arrow):
- `configure`: per patient, keep the streams of a drawn configuration (whole-stream dropout);
- `pre_aggregate`: per chosen patient, replace a high-rate stream by one averaged reading per interval.
Labels are then computed from the readings that remain (`sim.simulate.detect_events`), as for real data.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# (streams kept, share of patients): everything, a CGM with a fitness tracker, a CGM alone, ward monitoring
# (heart and respiration rate, with or without a fall detector), a heart-rate tracker alone.
CONFIGURATIONS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("glucose", "heart_rate", "respiration", "fall"), 0.30),
    (("glucose", "heart_rate"), 0.25),
    (("glucose",), 0.10),
    (("heart_rate", "respiration"), 0.15),
    (("heart_rate", "respiration", "fall"), 0.10),
    (("heart_rate",), 0.10),
)


def _codes(readings: pa.Table) -> tuple[np.ndarray, list[str]]:
    enc = pc.dictionary_encode(readings.column("patient_id")).combine_chunks()
    return np.asarray(enc.indices, dtype=np.int64), enc.dictionary.to_pylist()


def configure(readings: pa.Table, rng: np.random.Generator) -> tuple[pa.Table, dict[str, tuple[str, ...]]]:
    """Keep, per patient, only the streams of a configuration drawn from CONFIGURATIONS; returns the readings
    and each patient's configuration."""
    if len(readings) == 0:
        return readings, {}
    code, names = _codes(readings)
    shares = np.array([s for _, s in CONFIGURATIONS])
    drawn = rng.choice(len(CONFIGURATIONS), size=len(names), p=shares / shares.sum())
    stream = np.asarray(readings.column("stream").to_pylist(), dtype=object)
    keep = np.zeros(len(readings), dtype=bool)
    for k, (streams, _share) in enumerate(CONFIGURATIONS):
        keep |= (drawn[code] == k) & np.isin(stream, list(streams))
    return readings.filter(pa.array(keep)), {n: CONFIGURATIONS[d][0] for n, d in zip(names, drawn, strict=True)}


def pre_aggregate(
    readings: pa.Table,
    patients: list[str],
    streams: tuple[str, ...] = ("heart_rate", "respiration"),
    interval_ms: int = 300_000,
    seed: int = 0,
) -> pa.Table:
    """For `patients`, replace each of `streams` by one reading per `interval_ms` (aligned to the epoch):
    the mean of the interval's readings, stamped at a fixed per-patient offset into the interval (a device
    that reports at its own phase), as a fitness tracker's 5-minute heart rate does."""
    is_target = pc.and_(
        pc.is_in(readings.column("patient_id"), pa.array(patients, pa.string())),
        pc.is_in(readings.column("stream"), pa.array(list(streams), pa.string())),
    )
    rest = readings.filter(pc.invert(is_target))
    part = readings.filter(is_target)
    if len(part) == 0:
        return readings
    pid = part.column("patient_id").combine_chunks()
    t = part.column("event_time").cast(pa.int64()).to_numpy()
    grp = pc.binary_join_element_wise(pid, part.column("stream").combine_chunks(), "\x1f")
    key_code = np.asarray(pc.dictionary_encode(grp).indices, dtype=np.int64)
    interval = t // interval_ms
    key = key_code * (int(interval.max() - interval.min()) + 1) + (interval - interval.min())
    order = np.argsort(key, kind="stable")
    k = key[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    value = part.column("value").to_numpy(zero_copy_only=False)[order]
    mean = np.add.reduceat(value, starts) / np.diff(np.r_[starts, len(k)])
    first = order[starts]
    p_code = np.asarray(pc.dictionary_encode(pid).indices, dtype=np.int64)
    phase = np.random.default_rng(seed).integers(0, interval_ms, int(p_code.max()) + 1)
    stamp = interval[first] * interval_ms + phase[p_code[first]]
    agg = part.take(pa.array(first))
    agg = agg.set_column(agg.schema.get_field_index("value"), "value", pa.array(np.round(mean, 1)))
    agg = agg.set_column(
        agg.schema.get_field_index("event_time"),
        "event_time",
        pa.array(stamp, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
    )
    out = pa.concat_tables([rest, agg.cast(readings.schema)])
    return out.sort_by([("event_time", "ascending"), ("patient_id", "ascending")])
