"""Great Expectations on the samples that scoring runs write, outside the scoring run.

The hot path applies the suites compiled to Arrow to every row (pipeline.validate; a test checks that they
flag the rows GE flags). Each scoring run also writes a bounded sample per suite (every failing row first)
to `lake/_quality/<suite>/<sample id>.parquet`. Great Expectations itself validates those samples later,
in the `vitalstream-validate` flow (a deployment every few minutes under `vitalstream serve`; `vitalstream
run` and `demo` call it when their scoring run ends), and keeps its result beside the sample as .json.

Why not inside the run: importing and running Great Expectations costs more memory and CPU than anything
in a scoring run but the consumer (figures in docs/performance.md). Outside it, it is paid once per few
minutes instead of once per run.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ops.datadocs import kept_results, suite_names
from pipeline.sink import atomic_write


def validate_file(suite: str, sample: Path, result_path: Path) -> dict[str, Any]:
    """Validate a Parquet sample with the suite; write GE's result JSON; return a short summary."""
    from pipeline.validate import run_great_expectations

    table = pq.read_table(sample)
    result = run_great_expectations(table, suite)
    atomic_write(result_path, lambda tmp: tmp.write_text(json.dumps(result, indent=1, default=str)))
    failed = {
        f"{r['expectation_config']['type']}:{r['expectation_config']['kwargs'].get('column', '')}": r["result"].get(
            "unexpected_count", 0
        )
        for r in result["results"]
        if not r["success"]
    }
    return {"rows": len(table), "success": bool(result["success"]), "failed": failed, "path": str(result_path)}


def pending_samples(lake: Path) -> list[tuple[str, Path]]:
    """(suite, sample) for every sample under lake/_quality/ that has no validation result beside it yet,
    oldest first (sample ids start with a UTC timestamp)."""
    found = [
        (suite, sample)
        for suite in suite_names()
        for sample in (lake / "_quality" / suite).glob("*.parquet")
        if not sample.with_suffix(".json").exists()
    ]
    return sorted(found, key=lambda pair: (pair[1].stem, pair[0]))


def validate_pending(lake: Path) -> list[dict[str, Any]]:
    """Validate every pending sample with Great Expectations (see pending_samples); each result is kept
    as JSON beside its sample, so a sample is validated once. Returns one summary per sample."""
    out: list[dict[str, Any]] = []
    for suite, sample in pending_samples(lake):
        try:
            pq.read_metadata(sample)
        except (pa.ArrowInvalid, OSError) as exc:
            # Samples are written atomically, so this one was damaged later: set aside (kept, to look at),
            # reported, and not retried every few minutes.
            sample.rename(sample.with_suffix(".unreadable"))
            out.append({"suite": suite, "sample": sample.stem, "rows": 0, "success": False, "failed": {}})
            out[-1]["error"] = f"unreadable sample, set aside as {sample.with_suffix('.unreadable').name}: {exc}"
            continue
        summary = validate_file(suite, sample, sample.with_suffix(".json"))
        out.append({"suite": suite, "sample": sample.stem, **summary})
    return out


def prune(lake: Path, keep_days: float, now: datetime | None = None) -> int:
    """Delete samples and their validation results whose id (a UTC timestamp first) is older than
    `keep_days`; returns how many files went. A run writes about 1.6 MB of samples (capped at
    `quality_sample_rows` per suite), so a run every minute adds about 2 GB a day. `keep_days` 0 keeps all."""
    if keep_days <= 0:
        return 0
    cutoff = (now or datetime.now(UTC)) - timedelta(days=keep_days)
    removed = 0
    for suite in suite_names():
        for path in [*(lake / "_quality" / suite).glob("*.parquet"), *kept_results(lake, suite)]:
            try:
                written = datetime.strptime(path.stem[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            except ValueError:
                continue  # not ours: left alone
            if written < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
    return removed
