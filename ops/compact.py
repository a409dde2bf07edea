"""Compaction: merge the small files micro-batches leave in each date partition into files of a sensible size.

The scoring flow writes one file per batch and dataset, `part-<tag>-<seq>.parquet`, and its effectively-once
recovery depends on those names: on start it deletes `part-<tag>-<n>` for every n above the state
checkpoint's batch number, and a replayed batch overwrites its files by name. Compaction therefore

- only touches files of batches the group's state checkpoint already covers (n <= its `seq`): recovery never
  deletes those and no replay rewrites them, so they are final;
- writes `compact-<tag>-<first seq>-<last seq>.parquet`, a name recovery never matches, holding exactly the
  rows of the part (or older compact) files of that tag and partition whose numbers lie in the range;
- swaps atomically per output: the merged file is written aside (a dot-file), renamed in, and only then
  are its inputs removed. A crash before the rename leaves a stray dot-file (removed by the next run); a
  crash after it leaves inputs whose range a compact file covers, and the next run removes those first.
  Either way no row is lost, and after the next run none is doubled.

Between the rename and the removal of the inputs (milliseconds) a reader listing the directory can see
both; a table format with a manifest (Delta, Iceberg) would close that window and is not used here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import sink
from pipeline.errors import LakeNotWritable

_NAME = re.compile(
    r"^(?:part-(?P<tag>[A-Za-z0-9_.]+)-(?P<seq>\d+)|compact-(?P<ctag>[A-Za-z0-9_.]+)-(?P<lo>\d+)-(?P<hi>\d+))\.parquet$"
)
_SORT = {
    # Sorted files give Parquet row-group statistics that prune: "one patient's day" reads few row groups.
    "risk_scores": [("patient_id", "ascending"), ("window_start", "ascending")],
    "windows": [("patient_id", "ascending"), ("window_start", "ascending")],
    "quarantine": [("topic", "ascending"), ("partition", "ascending"), ("offset", "ascending")],
}


@dataclass(frozen=True)
class LakeFile:
    path: Path
    tag: str
    lo: int  # first batch number the file holds
    hi: int  # last batch number the file holds
    compact: bool

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def within(self, other: LakeFile) -> bool:
        return self.path != other.path and self.tag == other.tag and other.lo <= self.lo and self.hi <= other.hi


@dataclass
class CompactionReport:
    files_before: int = 0
    files_after: int = 0
    rows: int = 0  # rows rewritten into compact files
    bytes_before: int = 0
    bytes_after: int = 0
    outputs: list[str] = field(default_factory=list)
    repaired: int = 0  # inputs of an interrupted earlier run removed (their rows were already compacted)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "files_before": self.files_before,
            "files_after": self.files_after,
            "rows": self.rows,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "outputs": len(self.outputs),
            "repaired": self.repaired,
            "seconds": round(self.seconds, 3),
        }


def parse(path: Path) -> LakeFile | None:
    m = _NAME.match(path.name)
    if m is None:
        return None
    if m["tag"] is not None:
        seq = int(m["seq"])
        return LakeFile(path, m["tag"], seq, seq, compact=False)
    return LakeFile(path, m["ctag"], int(m["lo"]), int(m["hi"]), compact=True)


def checkpointed_seq(lake: Path) -> dict[str, int]:
    """Per file tag, the last batch number the group's state checkpoint covers."""
    out: dict[str, int] = {}
    for group_dir in (lake / "_state").glob("*"):
        saved = _read_seq(group_dir)
        if saved is not None:
            out[sink.file_tag(group_dir.name)] = saved
    return out


def _read_seq(group_dir: Path) -> int | None:
    import json

    try:
        gen = (group_dir / "CURRENT").read_text().strip()
        return int(json.loads((group_dir / gen / "state.json").read_text()).get("seq", 0))
    except (OSError, ValueError):
        return None


def compact(lake: Path, target_bytes: int = 128 * 2**20, datasets: tuple[str, ...] = sink.DATASETS) -> CompactionReport:
    """Compact every date partition of `datasets`; safe to re-run and to run beside the scoring flow."""
    started = time.perf_counter()
    report = CompactionReport()
    with _lock(lake):
        covered = checkpointed_seq(lake)  # read once: batches it covers stay final while we work
        for dataset in datasets:
            for partition in sorted((lake / dataset).glob("date=*")):
                if partition.is_dir():
                    compact_partition(partition, dataset, covered, target_bytes, report)
    report.seconds = time.perf_counter() - started
    return report


def compact_partition(
    partition: Path, dataset: str, covered: dict[str, int], target_bytes: int, report: CompactionReport
) -> None:
    for stray in partition.glob(".compact-*.tmp"):  # a run that died before its rename
        stray.unlink(missing_ok=True)
    files = [f for p in partition.glob("*.parquet") if (f := parse(p)) is not None]
    report.files_before += len(files)
    report.bytes_before += sum(f.size for f in files)
    # Repair an interrupted swap: inputs that a compact file already holds go.
    compacts = [f for f in files if f.compact]
    for f in files:
        if any(f.within(c) for c in compacts):
            f.path.unlink(missing_ok=True)
            report.repaired += 1
    files = [f for f in files if f.path.exists()]
    for tag in sorted({f.tag for f in files}):
        final = sorted((f for f in files if f.tag == tag and f.hi <= covered.get(tag, -1)), key=lambda f: f.lo)
        for group in _bins(final, target_bytes):
            if len(group) > 1:
                report.rows += merge(group, partition, dataset)
                report.outputs.append(str(partition / _compact_name(group)))
    after = [p for p in partition.glob("*.parquet") if parse(p) is not None]
    report.files_after += len(after)
    report.bytes_after += sum(p.stat().st_size for p in after)


def _bins(files: list[LakeFile], target_bytes: int) -> Iterator[list[LakeFile]]:
    """Consecutive runs (in batch order) of at most about `target_bytes`; a file at the target stands alone,
    so re-running changes nothing."""
    group: list[LakeFile] = []
    size = 0
    for f in files:
        if group and size + f.size > target_bytes:
            yield group
            group, size = [], 0
        group.append(f)
        size += f.size
    if group:
        yield group


def _compact_name(group: list[LakeFile]) -> str:
    return f"compact-{group[0].tag}-{group[0].lo:09d}-{group[-1].hi:09d}.parquet"


def merge(group: list[LakeFile], partition: Path, dataset: str) -> int:
    """Write the group's rows aside, rename the result in, then remove the inputs; returns the rows."""
    tables = [pq.read_table(f.path, partitioning=None) for f in group]
    table = pa.concat_tables(tables, promote_options="permissive")
    keys = [(c, order) for c, order in _SORT.get(dataset, []) if c in table.column_names]
    if keys:
        table = table.sort_by(keys)
    final = partition / _compact_name(group)
    tmp = partition / f".compact-{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=128_000)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())  # the data is on disk before the name points at it
        if pq.ParquetFile(tmp).metadata.num_rows != sum(len(t) for t in tables):
            raise LakeNotWritable(f"compaction of {partition} wrote a short file; inputs kept")
        os.replace(tmp, final)
        for f in group:
            if f.path != final:
                f.path.unlink()
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LakeNotWritable(f"cannot compact {partition}: {exc.strerror or exc}") from exc
    return len(table)


@contextlib.contextmanager
def _lock(lake: Path) -> Iterator[None]:
    """One compaction at a time per lake (the deployment also has a concurrency limit of one)."""
    try:
        (lake / "_state").mkdir(parents=True, exist_ok=True)
        fh = open(lake / "_state" / ".compaction.lock", "w")  # noqa: SIM115 (held for the whole block)
    except OSError as exc:
        raise LakeNotWritable(f"lake {lake} is not writable: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
