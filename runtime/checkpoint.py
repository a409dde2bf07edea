"""The state checkpoint: an `EngineState` on disk, under `<lake>/_state/<name>/`.

Each save writes a new generation directory (the tables as Arrow IPC streams, the rest as `state.json`) and
then switches the `CURRENT` pointer with an atomic rename, so a crash at any moment leaves either the old
checkpoint or the new one, never a mix. The checkpoint names the last batch it includes (`seq`): the
lake's files of later batches were written but never checkpointed, and `runtime.loop` removes them at
start-up before the batches are read again.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from models.scorer import COURSE_SCHEMA, HISTORY_SCHEMA, conform_history
from pipeline.alerts import AlertState
from pipeline.errors import LakeNotWritable
from pipeline.features import PARTIAL_SCHEMA
from pipeline.sink import DIR_MODE, FILE_MODE
from pipeline.window import DedupeIndex, WindowConfig, WindowState
from runtime.engine import EngineState, Totals


class FileCheckpoints:
    """Load and save one consumer group's (or scaled-out instance's) `EngineState`."""

    def __init__(self, lake: Path, name: str, window: WindowConfig) -> None:
        self.root = lake / "_state" / name
        self.window = window  # the dedupe index is kept per window: it needs the window length to load

    def load(self) -> EngineState | None:
        """The last saved state, or None when this group has never saved one."""
        current = self.root / "CURRENT"
        if not current.exists():
            return None
        gen = self.root / current.read_text().strip()
        tables = {}
        for path in gen.glob("*.arrow"):
            with path.open("rb") as f:
                is_file_format = f.read(6) == b"ARROW1"  # checkpoints written before the switch to streams
            with ipc.open_file(path) if is_file_format else ipc.open_stream(path) as reader:
                tables[path.stem] = reader.read_all()
        meta = json.loads((gen / "state.json").read_text())
        window = WindowState(
            open=tables.get("open", PARTIAL_SCHEMA.empty_table()).cast(PARTIAL_SCHEMA),
            source_high_ms={k: int(v) for k, v in meta["source_high_ms"].items()},
            watermark_ms=meta["watermark_ms"],
            dedupe=DedupeIndex.from_tables(self.window.window_ms, tables),
        )
        return EngineState(
            window=window,
            history=conform_history(tables.get("history", HISTORY_SCHEMA.empty_table())),  # older versions' too
            offsets={k: int(v) for k, v in meta["offsets"].items()},
            seq=int(meta.get("seq", 0)),
            totals=Totals.from_dict(meta["totals"]),
            alerts=AlertState.from_tables(tables),  # a checkpoint from before alerting: none open
            # from before the recent course: none kept (the next 6 hours read a shorter course)
            course=tables.get("course", COURSE_SCHEMA.empty_table()).cast(COURSE_SCHEMA),
        )

    def save(self, state: EngineState) -> None:
        """A new generation directory, then an atomic switch of the CURRENT pointer."""
        meta: dict[str, Any] = {
            "source_high_ms": state.window.source_high_ms,
            "watermark_ms": state.window.watermark_ms,
            "offsets": state.offsets,
            "seq": state.seq,
            "totals": state.totals.as_dict(),
            "saved_at": datetime.now(UTC).isoformat(),
        }
        dedupe = state.window.dedupe.to_tables() if state.window.dedupe is not None else {}
        tables: dict[str, pa.Table] = {
            "open": state.window.open,
            "history": state.history,
            "course": state.course,
            **dedupe,
            **state.alerts.to_tables(),
        }
        root = self.root
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
