"""A non-editable install must carry the data the code reads: schemas and the shipped checkpoint."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.contract import output_schemas

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_wheel_contains_schemas_and_checkpoint(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("vitalstream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for stream in ("glucose", "heart_rate", "respiration", "fall"):
        assert f"schemas/streams/{stream}.json" in names
        assert f"schemas/expectations/{stream}_readings.json" in names
    assert "schemas/expectations/windows.json" in names
    assert "schemas/outputs.json" in names
    assert "models/checkpoints/risk_lstm.pt" in names
    assert "sim/bidmc_data/bidmc_numerics_1hz.csv.gz" in names and "sim/bidmc_data/README.md" in names
    for module in ("cli/main.py", "flows/scoring.py", "runtime/loop.py", "ops/report.py", "sim/simulate.py"):
        assert module in names, module


def test_docs_document_every_output_column() -> None:
    # docs/analysts.md's column tables are generated from schemas/outputs.json (tests/system/test_docs.py)
    text = (ROOT / "docs" / "analysts.md").read_text()
    for dataset, columns in output_schemas().items():
        section = text.split(f"### `{dataset}/`\n", 1)[1].split("\n#", 1)[0]  # up to the next heading
        for col in columns:
            assert f"| `{col['name']}` |" in section, (dataset, col["name"])


def test_documented_columns_match_what_the_engine_writes(tiny_checkpoint: Path) -> None:
    from models.lstm import load_checkpoint
    from models.scorer import Scorer
    from pipeline.features import window_columns
    from pipeline.quarantine import QUARANTINE_SCHEMA

    docs = {name: {c["name"] for c in cols} - {"date"} for name, cols in output_schemas().items()}
    assert docs["windows"] == {*window_columns(), "dq_failure"}
    assert docs["quarantine"] == set(QUARANTINE_SCHEMA.names)
    from runtime.engine import empty_scores

    assert docs["risk_scores"] == set(empty_scores(Scorer(load_checkpoint(tiny_checkpoint))).column_names)
