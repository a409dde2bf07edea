"""The lake: hive-partitioned Parquet (`<dataset>/date=YYYY-MM-DD/part-<group>-<seq>.parquet`) and the state
checkpoint. Files appear atomically (written aside, then renamed). They are named by the consumer group and
the batch's sequence number, which the state checkpoint records: after a crash between a batch's files and
its checkpoint, the restart removes that batch's files and writes the batch again under the same number,
so nothing is doubled."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from pipeline.errors import LakeNotWritable

DATASETS = ("risk_scores", "windows", "quarantine")
FILE_MODE = 0o640  # health data: readable by the owner and the group (analysts), by nobody else
DIR_MODE = 0o750


def restrict_permissions() -> None:
    """Files and directories this process creates get no permissions for others (umask 027): this covers
    every writer, including intermediate directories that mkdir(parents=True) creates with the umask."""
    os.umask(os.umask(0o027) | 0o027)


_DATE_COLUMN = {"risk_scores": "window_start", "windows": "window_start", "quarantine": "kafka_timestamp"}


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
        _atomic_write(path, lambda tmp, part=part: pq.write_table(part, tmp, compression="zstd"))
        written.append(path)
    return written


def _atomic_write(path: Path, write: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        raise LakeNotWritable(f"cannot write {path}: {exc.strerror or exc}") from exc


# --- state checkpoint ---------------------------------------------------------------------------------


def state_dir(lake: Path, group: str) -> Path:
    return lake / "_state" / group


def save_state(lake: Path, group: str, tables: dict[str, pa.Table], meta: dict[str, Any]) -> None:
    """A new generation directory, then an atomic switch of the CURRENT pointer."""
    root = state_dir(lake, group)
    gen = f"gen-{uuid.uuid4().hex[:12]}"
    try:
        (root / gen).mkdir(parents=True, mode=DIR_MODE)
        for name, table in tables.items():
            # IPC stream format: unlike the file format it allows a dictionary per batch (the buffer's)
            with ipc.new_stream(root / gen / f"{name}.arrow", table.schema) as writer:
                writer.write_table(table)
        (root / gen / "state.json").write_text(json.dumps(meta, indent=1))
        for path in (root / gen).iterdir():
            os.chmod(path, FILE_MODE)
        tmp = root / f".CURRENT.{gen}"
        tmp.write_text(gen)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, root / "CURRENT")
    except OSError as exc:
        raise LakeNotWritable(f"cannot write state checkpoint under {root}: {exc.strerror or exc}") from exc
    for old in root.glob("gen-*"):
        if old.name != gen:
            shutil.rmtree(old, ignore_errors=True)


def load_state(lake: Path, group: str) -> tuple[dict[str, pa.Table], dict[str, Any]] | None:
    root = state_dir(lake, group)
    current = root / "CURRENT"
    if not current.exists():
        return None
    gen = root / current.read_text().strip()
    tables = {}
    for path in gen.glob("*.arrow"):
        with path.open("rb") as f:
            is_file_format = f.read(6) == b"ARROW1"  # checkpoints written before the switch to streams
        with ipc.open_file(path) if is_file_format else ipc.open_stream(path) as reader:
            tables[path.stem] = reader.read_all()
    return tables, json.loads((gen / "state.json").read_text())
