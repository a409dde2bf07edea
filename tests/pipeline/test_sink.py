"""The lake's writer: hive partitions by UTC date, batch files named by group and sequence number (rewrites
replace, discards remove only later batches), atomic files with the health-data mode, clear errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import T0

from pipeline.errors import LakeNotWritable
from pipeline.sink import DATASETS, FILE_MODE, ParquetLake, atomic_write, ensure_writable, write_dataset

MIN = 60_000
UTC_MS = pa.timestamp("ms", tz="UTC")


def windows(starts_ms: list[int], patient: str = "P1") -> pa.Table:
    """A minimal `windows`-like table: what the sink reads is the date column and the rows."""
    return pa.table(
        {
            "patient_id": [patient] * len(starts_ms),
            "window_start": pa.array(starts_ms, pa.int64()).cast(UTC_MS),
            "value": pa.array([float(i) for i in range(len(starts_ms))]),
        }
    )


def quarantine(kafka_ts_ms: list[int]) -> pa.Table:
    return pa.table(
        {
            "reason": ["invalid_json"] * len(kafka_ts_ms),
            "kafka_timestamp": pa.array(kafka_ts_ms, pa.int64()).cast(UTC_MS),
        }
    )


def batch(starts_ms: list[int], patient: str = "P1") -> dict[str, pa.Table]:
    w = windows(starts_ms, patient)
    q = quarantine(starts_ms)
    at = q.column("kafka_timestamp")
    alerts, acks = pa.table({"event_time": at, "state": ["raised"] * len(q)}), pa.table({"acked_at": at})
    return {"risk_scores": w, "windows": w, "quarantine": q, "alerts": alerts, "acks": acks}


def lake_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_write_dataset_splits_rows_by_utc_date_into_hive_partitions(tmp_path: Path) -> None:
    # T0 is midnight UTC: one row a minute before it, two after, one a day later.
    starts = [T0 - MIN, T0, T0 + 5 * MIN, T0 + 24 * 60 * MIN]
    written = write_dataset(tmp_path, "windows", windows(starts), "g-000000001")
    assert sorted(str(p.relative_to(tmp_path)) for p in written) == [
        "windows/date=2026-11-21/part-g-000000001.parquet",
        "windows/date=2026-11-22/part-g-000000001.parquet",
        "windows/date=2026-11-23/part-g-000000001.parquet",
    ]
    by_date = {p.parent.name: pq.read_table(p).column("value").to_pylist() for p in written}
    assert by_date == {"date=2026-11-21": [0.0], "date=2026-11-22": [1.0, 2.0], "date=2026-11-23": [3.0]}
    # Read back as a hive dataset, the partition column agrees with each row's own UTC date.
    t = ds.dataset(tmp_path / "windows", format="parquet", partitioning="hive").to_table()
    for row in t.to_pylist():
        assert str(row["date"]) == row["window_start"].strftime("%Y-%m-%d")
    assert write_dataset(tmp_path, "windows", windows([]), "g-000000002") == []  # nothing, not an empty file


def test_quarantine_is_partitioned_by_its_kafka_timestamp(tmp_path: Path) -> None:
    written = write_dataset(tmp_path, "quarantine", quarantine([T0 - 1, T0]), "g-000000001")
    assert sorted(p.parent.name for p in written) == ["date=2026-11-21", "date=2026-11-22"]


def test_write_batch_names_files_by_group_tag_and_sequence_number(tmp_path: Path) -> None:
    lake = ParquetLake(tmp_path, "vitalstream-scoring.0of2")  # characters outside [A-Za-z0-9_.] become _
    written = lake.write_batch(7, batch([T0]))
    assert lake_files(tmp_path) == sorted(str(p.relative_to(tmp_path)) for p in written)
    assert lake_files(tmp_path) == sorted(
        f"{name}/date=2026-11-22/part-vitalstream_scoring.0of2-000000007.parquet" for name in DATASETS
    )


def test_rewriting_a_batch_replaces_its_files_instead_of_doubling_rows(tmp_path: Path) -> None:
    lake = ParquetLake(tmp_path, "g")
    lake.write_batch(1, batch([T0, T0 + MIN]))
    lake.write_batch(2, batch([T0 + 10 * MIN]))
    before = lake_files(tmp_path)
    lake.write_batch(1, batch([T0, T0 + MIN]))  # a replay after a crash: same seq, same names
    assert lake_files(tmp_path) == before
    for name in DATASETS:
        assert ds.dataset(tmp_path / name, format="parquet", partitioning="hive").count_rows() == 3


def test_discard_after_removes_only_later_batches_of_the_same_group(tmp_path: Path) -> None:
    lake, other = ParquetLake(tmp_path, "g"), ParquetLake(tmp_path, "h")
    for seq in (1, 2, 3):
        lake.write_batch(seq, batch([T0 + seq * MIN, T0 - seq * MIN]))  # two date partitions each
        other.write_batch(seq + 10, batch([T0 + seq * MIN]))
    removed = lake.discard_after(1)
    assert sorted(p.name for p in removed) == sorted(
        [f"part-g-00000000{seq}.parquet" for seq in (2, 3) for _ in DATASETS for _ in range(2)]
    )
    left = lake_files(tmp_path)
    assert all(not Path(f).name.startswith(("part-g-000000002", "part-g-000000003")) for f in left)
    assert sum(Path(f).name == "part-g-000000001.parquet" for f in left) == 2 * len(DATASETS)
    assert sum(Path(f).name.startswith("part-h-") for f in left) == 3 * len(DATASETS)  # another group's: kept
    assert lake.discard_after(1) == []  # nothing more to remove


def test_atomic_write_leaves_no_temporary_file_and_sets_the_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "x.parquet"
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        assert not path.exists()  # a reader never sees the file before it is complete
        pq.write_table(windows([T0]), tmp)

    atomic_write(path, write)
    assert seen[0] != path and seen[0].parent == path.parent and seen[0].name.startswith(".")
    assert os.listdir(path.parent) == ["x.parquet"]
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE == 0o640
    assert pq.read_table(path).equals(windows([T0]))
    # Every file a batch writes goes through it.
    ParquetLake(tmp_path / "lake", "g").write_batch(1, batch([T0, T0 - MIN]))
    files = [p for p in (tmp_path / "lake").rglob("*") if p.is_file()]
    assert len(files) == 2 * len(DATASETS)
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {FILE_MODE}
    assert not [p for p in files if p.name.startswith(".")]


def test_a_failed_atomic_write_raises_lake_not_writable_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"

    def fail_halfway(tmp: Path) -> None:
        tmp.write_bytes(b"PAR1 partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(LakeNotWritable, match="No space left on device") as err:
        atomic_write(path, fail_halfway)
    assert str(path) in str(err.value)
    assert os.listdir(tmp_path) == []


def test_ensure_writable_creates_the_lake_and_leaves_nothing_behind(tmp_path: Path) -> None:
    lake = tmp_path / "new" / "lake"
    ensure_writable(lake)
    assert lake.is_dir() and os.listdir(lake) == []


def test_ensure_writable_raises_lake_not_writable_naming_the_path(tmp_path: Path) -> None:
    # As root chmod does not stop a write; a regular file where the lake should be does.
    lake = tmp_path / "lake"
    lake.write_text("")
    with pytest.raises(LakeNotWritable) as err:
        ensure_writable(lake)
    assert str(lake) in str(err.value) and "not writable" in str(err.value)
    with pytest.raises(LakeNotWritable) as err:
        ensure_writable(lake / "below")  # a file as a parent directory
    assert str(lake / "below") in str(err.value)


def test_write_quality_sample_path_and_content(tmp_path: Path) -> None:
    table = windows([T0, T0 + MIN])
    path = ParquetLake(tmp_path, "g").write_quality_sample("heart_rate_readings", "20261122T000000Z-abc123", table)
    assert path == str(tmp_path / "_quality" / "heart_rate_readings" / "20261122T000000Z-abc123.parquet")
    assert pq.read_table(path).equals(table)
    assert stat.S_IMODE(Path(path).stat().st_mode) == FILE_MODE
    assert os.listdir(Path(path).parent) == [Path(path).name]
