"""The analysts' first queries in docs/analysts.md run against a lake the real engine wrote, and answer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_report import build_lake

from ops.query import connect, latest_risk

ROOT = Path(__file__).resolve().parents[2]


def documented_sql() -> list[str]:
    text = (ROOT / "docs" / "analysts.md").read_text()
    start = text.index("## Querying the results")
    section = text[start : text.index("\n## ", start + 1)]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def report_lake(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    return build_lake(tmp_path_factory.mktemp("query") / "lake", tiny_checkpoint)


def test_every_documented_query_runs_and_answers(report_lake: Path) -> None:
    queries = documented_sql()
    assert len(queries) == 5
    con = connect(report_lake)
    try:
        for sql in queries:
            rows = con.execute(sql.replace("P000042", "P7")).fetchall()
            assert rows, sql  # each answers something on a lake with one patient's hour
    finally:
        con.close()


def test_latest_risk_is_each_patients_last_window(report_lake: Path) -> None:
    (row,) = latest_risk(report_lake)
    assert row["patient_id"] == "P7" and row["window_end_utc"] == "2026-11-22 01:00"
    assert 0 <= row["risk_score"] <= 1 and row["context_windows"] >= 1
