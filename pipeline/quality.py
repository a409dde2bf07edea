"""Great Expectations in a helper process: the run's quality sample is validated outside the scoring process.

Importing Great Expectations costs about 130 MiB and 3-4 s. The scoring process only needs its verdict on
each run's sample (the hot path uses the Arrow-compiled suites, see pipeline.validate), so a helper process
is started when the flow starts, imports Great Expectations while the run consumes, and validates the
samples the run writes under lake/_quality/ when asked. One request per line on stdin, one JSON reply per
line on stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def validate_file(suite: str, sample: Path, result_path: Path) -> dict[str, Any]:
    """Validate a Parquet sample with the suite; write GE's result JSON; return a short summary."""
    from pipeline.validate import run_great_expectations

    table = pq.read_table(sample)
    result = run_great_expectations(table, suite)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1, default=str))
    failed = {
        f"{r['expectation_config']['type']}:{r['expectation_config']['kwargs'].get('column', '')}": r["result"].get(
            "unexpected_count", 0
        )
        for r in result["results"]
        if not r["success"]
    }
    return {"rows": len(table), "success": bool(result["success"]), "failed": failed, "path": str(result_path)}


class QualityProcess:
    """The helper process, started at once; `validate` blocks until it answers."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.quality"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def validate(self, suite: str, sample: Path, result_path: Path) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"suite": suite, "sample": str(sample), "result": str(result_path)}
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            reply = self.proc.stdout.readline()
        except BrokenPipeError:
            reply = ""
        if not reply:
            raise RuntimeError(f"quality process ended (exit code {self.proc.poll()}) while validating {suite}")
        answer: dict[str, Any] = json.loads(reply)
        if "error" in answer:
            raise RuntimeError(f"Great Expectations failed on {suite}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def write_sample(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _serve() -> None:
    from pipeline.validate import _ge_context

    _ge_context()  # the slow import, done while the run consumes
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = validate_file(request["suite"], Path(request["sample"]), Path(request["result"]))
        except Exception as exc:  # reported to the flow, which fails the validate task with it
            answer = {"error": repr(exc)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
