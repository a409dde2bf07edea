"""The state checkpoint on disk: an engine's state after real batches survives a save and a load exactly; one
generation directory is kept; a generation the CURRENT pointer does not name (a crash mid-save) is ignored."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import T0, LakeEngine

from models.scorer import COURSE_SCHEMA
from pipeline.batch import RawBatch
from pipeline.errors import LakeNotWritable
from pipeline.sink import FILE_MODE
from pipeline.window import WindowConfig
from runtime.checkpoint import FileCheckpoints
from runtime.engine import EngineState

MIN = 60_000
FIELD = {"heart_rate": "heart_rate_bpm", "glucose": "glucose_mg_dl"}


class Topics:
    """RawBatches with offsets that carry on per topic-partition from batch to batch, as Kafka's do."""

    def __init__(self) -> None:
        self.next: dict[tuple[str, int], int] = {}

    def batch(
        self, stream: str, minutes: range, patient: str, partition: int, extra: tuple[bytes, ...] = ()
    ) -> RawBatch:
        values = [
            json.dumps(
                {"patient_id": patient, "device_id": f"{stream}-{patient}", "ts": T0 + m * MIN, FIELD[stream]: 80 + m}
            ).encode()
            for m in minutes
        ] + list(extra)
        start = self.next.get((stream, partition), 0)
        self.next[stream, partition] = start + len(values)
        return RawBatch(
            stream=stream,
            topic=f"vitals.{stream}",
            keys=[patient.encode()] * len(values),
            values=values,
            partitions=np.full(len(values), partition, np.int32),
            offsets=np.arange(start, start + len(values), dtype=np.int64),
            timestamps_ms=np.full(len(values), T0 + minutes.stop * MIN, np.int64),
        )


def run_batches(lake: Path, ckpt: Path, name: str = "g") -> LakeEngine:
    """Three batches through the engine, each written and checkpointed as the run loop does: two patients on
    two partitions, two streams, a malformed message and a duplicate; windows closed and windows still open."""
    topics = Topics()
    engine = LakeEngine(lake, ckpt, name)
    batches = [
        [topics.batch("heart_rate", range(0, 12), "P1", 0), topics.batch("glucose", range(0, 12, 3), "P2", 1)],
        [
            topics.batch("heart_rate", range(12, 24), "P1", 0, (b"{broken",)),
            topics.batch("glucose", range(12, 18), "P2", 1),
        ],
        [topics.batch("heart_rate", range(23, 31), "P1", 0)],  # minute 23 again: a duplicate
    ]
    for raw in batches:
        engine.write(engine.process(raw))
    return engine


def assert_same_state(loaded: EngineState, saved: EngineState) -> None:
    assert loaded.window.open.equals(saved.window.open)
    assert loaded.window.watermark_ms == saved.window.watermark_ms
    assert loaded.window.source_high_ms == saved.window.source_high_ms
    assert loaded.window.dedupe is not None and saved.window.dedupe is not None
    assert loaded.window.dedupe.series.equals(saved.window.dedupe.series)
    assert loaded.window.dedupe.by_window.keys() == saved.window.dedupe.by_window.keys()
    for w, keys in saved.window.dedupe.by_window.items():
        np.testing.assert_array_equal(loaded.window.dedupe.by_window[w], keys)
    assert loaded.history.equals(saved.history)
    assert loaded.course.equals(saved.course)
    assert loaded.offsets == saved.offsets
    assert loaded.seq == saved.seq
    assert loaded.totals.as_dict() == saved.totals.as_dict()


def generations(lake: Path, name: str = "g") -> list[str]:
    return sorted(p.name for p in (lake / "_state" / name).glob("gen-*"))


def test_save_then_load_round_trips_the_engine_state(tmp_path: Path, tiny_checkpoint: Path) -> None:
    engine = run_batches(tmp_path, tiny_checkpoint)
    saved = engine.snapshot()
    # a state worth the name: every part of it holds something
    assert len(saved.window.open) > 0 and saved.window.watermark_ms is not None
    assert saved.window.source_high_ms.keys() == {"vitals.heart_rate:0", "vitals.glucose:1"}
    assert saved.window.dedupe is not None and saved.window.dedupe.by_window and len(saved.window.dedupe.series) == 2
    assert len(saved.history) > 0 and saved.seq == 3
    assert len(saved.course) >= len(saved.history)  # the tiny checkpoint reads the recent course: 6 h of it
    assert saved.offsets == {"vitals.heart_rate:0": 33, "vitals.glucose:1": 10}
    assert saved.totals.duplicates == 1 and saved.totals.quarantined == {"invalid_json": 1}
    assert saved.totals.windows > 0

    loaded = FileCheckpoints(tmp_path, "g", WindowConfig()).load()
    assert loaded is not None
    assert_same_state(loaded, saved)

    # The restored dedupe index still knows the open windows' readings: a redelivered one is a duplicate.
    again = LakeEngine(tmp_path, tiny_checkpoint)
    redelivered = Topics().batch("heart_rate", range(30, 31), "P1", 0)
    assert again.process([redelivered]).counts.duplicates == 1


def test_a_checkpoint_from_an_older_model_contract_loads_and_scores(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """A state saved before the reading counts became model inputs (an upgrade): the run resumes and scores,
    with the counts missing for the hour of context the old state covers."""
    engine = run_batches(tmp_path, tiny_checkpoint)
    saved = engine.snapshot()
    older = saved.history.drop_columns([c for c in saved.history.column_names if c.endswith("_count")][:3])
    assert older.schema != saved.history.schema
    FileCheckpoints(tmp_path, "g", WindowConfig()).save(replace(saved, history=older))
    loaded = FileCheckpoints(tmp_path, "g", WindowConfig()).load()
    assert loaded is not None and loaded.history.schema == saved.history.schema
    dropped = set(saved.history.column_names) - set(older.column_names)
    assert all(loaded.history.column(c).null_count == len(older) for c in dropped)
    # a state from before the recent course was kept: none (the next hours read a shorter course)
    gen = (tmp_path / "_state" / "g" / "CURRENT").read_text().strip()
    (tmp_path / "_state" / "g" / gen / "course.arrow").unlink()
    loaded = FileCheckpoints(tmp_path, "g", WindowConfig()).load()
    assert loaded is not None and len(loaded.course) == 0 and loaded.course.schema == COURSE_SCHEMA
    resumed = LakeEngine(tmp_path, tiny_checkpoint)
    topics = Topics()
    topics.next["heart_rate", 0] = saved.offsets["vitals.heart_rate:0"]
    out = resumed.process([topics.batch("heart_rate", range(33, 90), "P1", 0)], drain=True)
    assert len(out.risk_scores) > 0


def test_load_without_a_checkpoint_is_none(tmp_path: Path) -> None:
    assert FileCheckpoints(tmp_path, "g", WindowConfig()).load() is None


def test_only_the_newest_generation_remains_and_its_files_are_private(tmp_path: Path, tiny_checkpoint: Path) -> None:
    run_batches(tmp_path, tiny_checkpoint)  # three saves
    root = tmp_path / "_state" / "g"
    (current,) = generations(tmp_path)
    assert (root / "CURRENT").read_text().strip() == current
    assert sorted(p.name for p in root.iterdir()) == ["CURRENT", current]  # no old generation, no temporary
    files = [root / "CURRENT", *(root / current).iterdir()]
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {FILE_MODE}
    assert {p.name for p in (root / current).iterdir()} >= {"state.json", "open.arrow", "history.arrow"}


def test_a_generation_the_current_pointer_does_not_name_is_ignored(tmp_path: Path, tiny_checkpoint: Path) -> None:
    engine = run_batches(tmp_path, tiny_checkpoint)
    store = FileCheckpoints(tmp_path, "g", WindowConfig())
    (good,) = generations(tmp_path)
    # A crash mid-save: a complete-looking newer generation, but CURRENT was never switched to it.
    stray = tmp_path / "_state" / "g" / "gen-000000crash"
    stray.mkdir()
    meta = json.loads((tmp_path / "_state" / "g" / good / "state.json").read_text())
    (stray / "state.json").write_text(json.dumps({**meta, "seq": 99, "offsets": {"vitals.heart_rate:0": 10_000}}))
    (stray / "open.arrow").write_bytes(b"half written")
    loaded = store.load()
    assert loaded is not None
    assert_same_state(loaded, engine.snapshot())
    assert loaded.seq == 3
    # The next save switches to a new generation and removes both the old one and the stray.
    store.save(loaded)
    (newest,) = generations(tmp_path)
    assert newest not in (good, stray.name)


def test_a_lake_where_the_state_directory_cannot_be_created_raises_lake_not_writable(tmp_path: Path) -> None:
    # As root chmod does not stop a write; a regular file where a directory should be does.
    lake = tmp_path / "lake"
    lake.write_text("")
    with pytest.raises(LakeNotWritable) as err:
        FileCheckpoints(lake, "g", WindowConfig()).save(EngineState())
    assert str(lake / "_state" / "g") in str(err.value)
    other = tmp_path / "other"
    other.mkdir()
    (other / "_state").write_text("")
    with pytest.raises(LakeNotWritable):
        FileCheckpoints(other, "g", WindowConfig()).save(EngineState())
    assert os.listdir(other) == ["_state"]


def test_an_empty_state_round_trips(tmp_path: Path) -> None:
    store = FileCheckpoints(tmp_path, "g", WindowConfig())
    store.save(EngineState())
    loaded = store.load()
    assert loaded is not None
    assert len(loaded.window.open) == 0 and loaded.window.watermark_ms is None and loaded.window.source_high_ms == {}
    assert len(loaded.history) == 0 and loaded.offsets == {} and loaded.seq == 0
    assert loaded.totals.as_dict() == EngineState().totals.as_dict()
    assert pa.types.is_timestamp(loaded.history.schema.field("window_start").type)
