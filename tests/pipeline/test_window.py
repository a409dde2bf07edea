"""Event-time semantics: window edges, out-of-order, duplicates, late rows, missing and idle streams."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa
from conftest import T0
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.readings import PROVENANCE_SCHEMA
from pipeline.window import DedupeIndex, WindowConfig, WindowState, step

MIN = 60_000
CFG = WindowConfig(
    window=timedelta(minutes=5), allowed_lateness=timedelta(minutes=2), idle_timeout=timedelta(minutes=10)
)


def readings(rows: list[tuple[str, str, int, float]], source: str = "vitals.heart_rate:0") -> pa.Table:
    """rows: (patient, stream, event time ms, value)."""
    n = len(rows)
    return pa.table(
        {
            "patient_id": [r[0] for r in rows],
            "device_id": [f"{r[1]}-{r[0]}" for r in rows],
            "stream": [r[1] for r in rows],
            "event_time": pa.array([r[2] for r in rows], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "value": [float(r[3]) for r in rows],
            "fall_confidence": pa.nulls(n, pa.float64()),
            "impact_g": pa.nulls(n, pa.float64()),
            "censored": [False] * n,
            "source": [source] * n,
            "src": pa.array(range(n), pa.int32()),
        }
    )


def starts(windows: pa.Table) -> list[int]:
    return windows.column("window_start").cast(pa.int64()).to_pylist()


def test_window_edges_are_half_open_and_epoch_aligned() -> None:
    state = WindowState()
    r = readings(
        [
            ("P1", "heart_rate", T0 + 5 * MIN - 1, 60),
            ("P1", "heart_rate", T0 + 5 * MIN, 90),
            ("P1", "heart_rate", T0 + 30 * MIN, 70),
        ]
    )
    s = step(state, r, CFG)
    assert starts(s.windows) == [T0, T0 + 5 * MIN]
    assert s.windows.column("heart_rate_bpm_mean").to_pylist() == [60, 90]
    assert s.windowed_readings == 2 and state.open_readings == 1


def test_window_closes_only_after_allowed_lateness() -> None:
    state = WindowState()
    s = step(state, readings([("P1", "heart_rate", T0 + MIN, 60), ("P1", "heart_rate", T0 + 6 * MIN, 60)]), CFG)
    assert len(s.windows) == 0  # watermark 6 min < end 5 + lateness 2
    s = step(state, readings([("P1", "heart_rate", T0 + 7 * MIN, 60)]), CFG)
    assert starts(s.windows) == [T0]


def test_out_of_order_within_lateness_is_kept_and_late_is_flagged() -> None:
    state = WindowState()
    step(state, readings([("P1", "heart_rate", T0 + 6 * MIN + 30_000, 60)]), CFG)
    s = step(state, readings([("P1", "heart_rate", T0 + 4 * MIN, 80)]), CFG)  # older, window still open
    assert not s.late.any()
    s = step(state, readings([("P1", "heart_rate", T0 + 12 * MIN, 60)]), CFG)
    assert starts(s.windows) == [T0, T0 + 5 * MIN]
    s = step(state, readings([("P1", "heart_rate", T0 + 2 * MIN, 99)]), CFG)  # its window has closed
    assert s.late.tolist() == [True] and s.windowed_readings == 0


def test_exact_duplicates_are_dropped_against_the_batch_and_the_buffer() -> None:
    state = WindowState()
    r = readings(
        [
            ("P1", "heart_rate", T0 + MIN, 60),
            ("P1", "heart_rate", T0 + MIN, 60),
            ("P1", "respiration", T0 + MIN, 60),
        ]
    )
    s = step(state, r, CFG)
    assert s.duplicate.tolist() == [False, True, False]  # same time, other stream: not a duplicate
    s = step(state, readings([("P1", "heart_rate", T0 + MIN, 60), ("P2", "heart_rate", T0 + MIN, 60)]), CFG)
    assert s.duplicate.tolist() == [True, False]


def test_missing_stream_gives_presence_false_and_null_features() -> None:
    state = WindowState()
    s = step(state, readings([("P1", "heart_rate", T0 + MIN, 60)]), CFG, drain=True)
    w = s.windows.to_pylist()[0]
    assert w["heart_rate_present"] and not w["glucose_present"] and not w["respiration_present"]
    assert w["glucose_mg_dl_mean"] is None and w["glucose_count"] == 0


def test_an_idle_source_does_not_stall_the_watermark() -> None:
    state = WindowState()
    step(state, readings([("P1", "fall", T0, 1)], source="vitals.fall:0"), CFG)
    s = step(state, readings([("P1", "heart_rate", T0 + 8 * MIN, 70)]), CFG)
    assert state.watermark_ms == T0  # fall trails by 8 min < idle timeout: it still holds the watermark
    s = step(state, readings([("P1", "heart_rate", T0 + 20 * MIN, 70)]), CFG)
    assert state.watermark_ms == T0 + 20 * MIN  # fall is idle now
    assert starts(s.windows) == [T0, T0 + 5 * MIN]


def test_a_backlogged_partition_holds_the_watermark_until_it_delivers_and_catches_up() -> None:
    """A replay: glucose is read to its end at once while heart rate, with unread messages, is behind."""
    state, hr, glu = WindowState(), "vitals.heart_rate:0", "vitals.glucose:0"
    ahead = readings([("P1", "glucose", T0 + 60 * MIN, 100)], source=glu)
    s = step(state, ahead, CFG, lagging={hr})  # heart rate has delivered nothing yet
    assert state.watermark_ms is None and len(s.windows) == 0
    s = step(state, readings([("P1", "heart_rate", T0 + MIN, 60)], source=hr), CFG, lagging={hr})
    assert state.watermark_ms == T0 + MIN  # held by the lagging source, not by glucose 59 minutes ahead
    s = step(state, readings([("P1", "heart_rate", T0 + 20 * MIN, 61)], source=hr), CFG, lagging={hr})
    assert not s.late.any() and starts(s.windows) == [T0]  # its own progress closes windows
    # Caught up, heart rate now trails glucose by more than the idle timeout: idle, glucose leads.
    s = step(state, readings([("P1", "heart_rate", T0 + 21 * MIN, 62)], source=hr), CFG, lagging=set())
    assert state.watermark_ms == T0 + 60 * MIN
    late = step(state, readings([("P1", "heart_rate", T0 + 22 * MIN, 63)], source=hr), CFG)
    assert late.late.all()


def test_watermark_never_goes_back() -> None:
    state = WindowState()
    step(state, readings([("P1", "heart_rate", T0 + 20 * MIN, 70)]), CFG)
    step(state, readings([("P1", "respiration", T0 + 15 * MIN, 16)], source="vitals.respiration:0"), CFG)
    assert state.watermark_ms == T0 + 20 * MIN


def test_drain_closes_everything_and_accounting_holds() -> None:
    rng = np.random.default_rng(3)
    state = WindowState()
    total = windowed = dups = late = 0
    for batch in range(20):
        t = T0 + batch * MIN + rng.integers(-4 * MIN, MIN, size=200)
        rows = [(f"P{i % 5}", "heart_rate", int(x), 70.0) for i, x in enumerate(t)]
        rows += rows[:10]  # duplicates
        s = step(state, readings(rows), CFG)
        total += len(rows)
        windowed += s.windowed_readings
        dups += int(s.duplicate.sum())
        late += int(s.late.sum())
    s = step(
        state,
        PROVENANCE_SCHEMA.empty_table(),
        CFG,
        drain=True,
    )
    windowed += s.windowed_readings
    assert state.open_readings == 0
    assert late > 0 and dups > 0
    assert total == windowed + dups + late


def _reference_duplicates(rows: list[tuple[str, str, str, int]]) -> list[bool]:
    """The definition, one row at a time: a later copy of (patient, stream, device, event time)."""
    seen: set[tuple[str, str, str, int]] = set()
    out = []
    for r in rows:
        out.append(r in seen)
        seen.add(r)
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["P1", "P2", "P3"]),
            st.sampled_from(["heart_rate", "respiration"]),
            st.sampled_from(["a", "b"]),
            st.integers(0, 40).map(lambda s: T0 + s * 15_000),
        ),
        max_size=60,
    ),
    st.integers(1, 5),
)
def test_dedupe_index_matches_the_definition_across_batches(rows: list[tuple[str, str, str, int]], parts: int) -> None:
    """Split into batches; with no window closing (no watermark), every later copy is a duplicate."""
    state = WindowState()
    lazy = WindowConfig(window=timedelta(minutes=5), allowed_lateness=timedelta(days=1))
    got: list[bool] = []
    size = max(1, len(rows) // parts)
    for i in range(0, len(rows), size):
        chunk = rows[i : i + size]
        t = readings([(p, s, ts, 1.0) for p, s, _, ts in chunk])
        t = t.set_column(1, "device_id", pa.array([d for _, _, d, _ in chunk], pa.string()))
        got += step(state, t, lazy).duplicate.tolist()
    assert got == _reference_duplicates(rows)


def test_dedupe_index_tables_round_trip_and_read_the_earlier_layout() -> None:
    """The checkpoint's tables (one chunk of keys per window) load back to the same index, and a checkpoint
    written with the earlier layout (a window_start beside every key) still loads."""
    state = WindowState()
    lazy = WindowConfig(window=timedelta(minutes=5), allowed_lateness=timedelta(days=1))
    rows = [(f"P{i % 7}", "heart_rate", T0 + i * 41_000, 60.0 + i) for i in range(60)]  # several windows
    step(state, readings(rows), lazy)
    index = state.dedupe
    assert index is not None and len(index.by_window) > 2
    tables = index.to_tables()
    assert tables["dedupe_runs"].column("key").num_chunks == len(index.by_window)
    windows = list(index.by_window)
    earlier = {
        "dedupe_series": tables["dedupe_series"],
        "dedupe_keys": pa.table(
            {
                "window_start": np.repeat(np.asarray(windows, np.int64), [len(index.by_window[w]) for w in windows]),
                "key": np.concatenate([index.by_window[w][::-1] for w in windows]),  # unsorted on disk is fine
            }
        ),
    }
    for loaded in (DedupeIndex.from_tables(index.window_ms, tables), DedupeIndex.from_tables(index.window_ms, earlier)):
        assert loaded.series.equals(index.series)
        assert loaded.by_window.keys() == index.by_window.keys()
        for w, keys in index.by_window.items():
            np.testing.assert_array_equal(loaded.by_window[w], keys)
    empty = DedupeIndex(index.window_ms).to_tables()
    assert DedupeIndex.from_tables(index.window_ms, empty).by_window == {}
