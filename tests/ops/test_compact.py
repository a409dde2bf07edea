"""Compaction over a lake the real engine wrote: same rows before and after, idempotent, and it leaves the
scoring flow's crash recovery (remove files numbered after the checkpoint, replay them) intact."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import assert_same_lake, micro_batches_of_a_day_boundary, run_engine

from ops.compact import compact, parse
from pipeline import sink
from pipeline.batch import RawBatch


@pytest.fixture(scope="module")
def micro_batches() -> list[list[RawBatch]]:
    return micro_batches_of_a_day_boundary()


def data_files(lake: Path) -> list[str]:
    return sorted(str(p.relative_to(lake)) for d in sink.DATASETS for p in (lake / d).glob("date=*/*.parquet"))


def all_rows(lake: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(lake / p).num_rows for p in data_files(lake))


@pytest.fixture(scope="module")
def clean_lake(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, micro_batches: list) -> Path:
    lake = tmp_path_factory.mktemp("clean") / "lake"
    run_engine(lake, tiny_checkpoint, micro_batches)
    return lake


@pytest.fixture
def lake(clean_lake: Path, tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / "lake"
    shutil.copytree(clean_lake, copy)
    yield copy


def test_compaction_keeps_every_row_once_and_a_rerun_changes_nothing(lake: Path, clean_lake: Path) -> None:
    before = data_files(lake)
    assert len({p.split("/")[1] for p in before}) == 2 and len(before) > 20  # two dates, many small files

    small = compact(lake, target_bytes=30_000)  # several outputs per partition: the size bound splits them
    assert_same_lake(lake, clean_lake)
    assert small.files_after < small.files_before == len(before)
    assert 0 < small.rows < all_rows(clean_lake)  # some files stood alone

    full = compact(lake)  # the default target: one file per dataset and date
    assert_same_lake(lake, clean_lake)
    after = data_files(lake)
    partitions = {tuple(p.split("/")[:2]) for p in before}  # (dataset, date): alerts too
    assert len(after) == len(partitions) >= 6 and all(Path(p).name.startswith("compact-g_1-") for p in after)
    assert full.files_before == small.files_after

    again = compact(lake)
    assert data_files(lake) == after and again.rows == 0 and again.outputs == []
    assert_same_lake(lake, clean_lake)


def test_an_interrupted_swap_is_finished_by_the_next_run(lake: Path, clean_lake: Path) -> None:
    inputs = lake.parent / "inputs"
    shutil.copytree(lake, inputs)
    compact(lake)
    # The state a crash leaves after renaming the compact file in but before removing its inputs: both
    # present (rows doubled for a reader), plus the dot-file of a merge that died before its rename.
    for p in inputs.glob("*/date=*/part-*.parquet"):
        shutil.copy(p, lake / p.relative_to(inputs))
    some_partition = next((lake / "windows").glob("date=*"))
    (some_partition / ".compact-deadbeef.tmp").write_bytes(b"half a file")
    with pytest.raises(AssertionError):
        assert_same_lake(lake, clean_lake)

    report = compact(lake)

    assert report.repaired > 0
    assert not list(some_partition.glob(".compact-*"))
    assert_same_lake(lake, clean_lake)


def test_only_checkpointed_batches_are_compacted_and_crash_recovery_still_works(
    tmp_path: Path, tiny_checkpoint: Path, micro_batches: list, clean_lake: Path
) -> None:
    lake = tmp_path / "lake"
    engine = run_engine(lake, tiny_checkpoint, micro_batches[:6], drain=False)
    # Batch 7's files are written but the process dies before its state checkpoint.
    out = engine.process(micro_batches[6])
    engine.lake.write_batch(out.seq, out.datasets())
    uncheckpointed = {p for p in data_files(lake) if f"-{out.seq:09d}." in p}
    assert uncheckpointed

    compact(lake)

    files = data_files(lake)
    assert uncheckpointed <= set(files)  # compaction left the uncovered batch alone ...
    for p in files:
        f = parse(lake / p)
        assert f is not None and (f.hi <= 6 if f.compact else True)
    assert any("compact-" in p for p in files)
    # ... and the restart removes it, then replays batch 7 onwards under the same numbers.
    run_engine(lake, tiny_checkpoint, micro_batches[6:])
    assert_same_lake(lake, clean_lake)
    compact(lake)
    assert_same_lake(lake, clean_lake)
