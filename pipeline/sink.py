"""The lake: hive-partitioned Parquet (`<dataset>/date=YYYY-MM-DD/part-<group>-<seq>.parquet`), plus the
samples Great Expectations validates later (`_quality/<suite>/<sample id>.parquet`).

Files appear atomically (written aside, then renamed: `atomic_write`, the one writer every file of the lake
goes through). A batch's files are named by the consumer group and the batch's sequence number, which the
state checkpoint (runtime.checkpoint) records: after a crash between a batch's files and its checkpoint,
the restart removes that batch's files (`ParquetLake.discard_after`) and writes the batch again under the
same number, so nothing is doubled."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import LakeNotWritable

DATASETS = ("risk_scores", "windows", "quarantine", "alerts", "acks")
FILE_MODE = 0o640  # health data: readable by the owner and the group (analysts), by nobody else
DIR_MODE = 0o750


def restrict_permissions() -> None:
    """Files and directories this process creates get no permissions for others (umask 027): this covers
    every writer, including intermediate directories that mkdir(parents=True) creates with the umask."""
    os.umask(os.umask(0o027) | 0o027)


_DATE_COLUMN = {
    "risk_scores": "window_start",
    "windows": "window_start",
    "quarantine": "kafka_timestamp",
    "alerts": "event_time",  # who would have been told what, and when (pipeline.alerts)
    "acks": "acked_at",
}


def ensure_writable(lake: Path) -> None:
    try:
        lake.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        probe = lake / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LakeNotWritable(f"lake {lake} is not writable: {exc.strerror or exc}") from exc


def file_tag(group: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", group)


def remove_after(lake: Path, tag: str, seq: int) -> list[Path]:
    """Delete the files of batches numbered above `seq` (written, never checkpointed); returns them."""
    pattern = re.compile(rf"part-{re.escape(tag)}-(\d+)\.parquet$")
    removed = []
    for dataset in DATASETS:
        for path in (lake / dataset).glob(f"date=*/part-{tag}-*.parquet"):
            m = pattern.search(path.name)
            if m and int(m.group(1)) > seq:
                path.unlink()
                removed.append(path)
    return removed


def write_dataset(lake: Path, dataset: str, table: pa.Table, batch_id: str) -> list[Path]:
    """Write `table` split by UTC date; returns the files written."""
    if len(table) == 0:
        return []
    ts = table.column(_DATE_COLUMN[dataset])
    day = pc.strftime(ts, format="%Y-%m-%d", locale="C")
    written = []
    enc = pc.dictionary_encode(day).combine_chunks()
    codes = np.asarray(enc.indices)
    for i, date in enumerate(enc.dictionary.to_pylist()):
        part = table.filter(pa.array(codes == i))
        path = lake / dataset / f"date={date}" / f"part-{batch_id}.parquet"
        atomic_write(path, partial(pq.write_table, part, compression="zstd"))
        written.append(path)
    return written


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write beside `path` under a hidden name with `write(tmp)`, then rename: a crash never leaves a partial
    file for a reader (DuckDB, the validation, the Data Docs) to trip over, and a failed write leaves nothing."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        raise LakeNotWritable(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # gone after the rename; a failed write's partial file goes here


class ParquetLake:
    """One consumer group's (or scaled-out instance's) view of the lake, as `runtime.loop` uses it."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.tag = file_tag(name)

    def batch_id(self, seq: int) -> str:
        return f"{self.tag}-{seq:09d}"

    def write_batch(self, seq: int, datasets: Mapping[str, pa.Table]) -> list[Path]:
        """A batch's tables, one file per dataset and UTC date; the same names every time for the same seq."""
        return [p for name in DATASETS for p in write_dataset(self.root, name, datasets[name], self.batch_id(seq))]

    def discard_after(self, seq: int) -> list[Path]:
        """Remove the files of batches numbered above `seq` (written, never checkpointed)."""
        return remove_after(self.root, self.tag, seq)

    def write_quality_sample(self, suite: str, sample_id: str, table: pa.Table) -> str:
        """A suite's sample for Great Expectations (ops.quality validates it later); returns its path."""
        path = self.root / "_quality" / suite / f"{sample_id}.parquet"
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        return str(path)
