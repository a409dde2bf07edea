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


def test_a_patient_whose_latest_window_has_no_score_is_not_ranked(report_lake: Path, tmp_path: Path) -> None:
    import shutil

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    lake = tmp_path / "lake"
    shutil.copytree(report_lake, lake)
    (part,) = sorted((lake / "risk_scores").glob("date=*"))[-1:]
    last = pq.read_table(next(part.glob("*.parquet"))).slice(0, 1)
    last = last.set_column(last.schema.get_field_index("patient_id"), "patient_id", pa.array(["NEW"]))
    unscored = last.set_column(
        last.schema.get_field_index("risk_score"), "risk_score", pa.nulls(1, last.schema.field("risk_score").type)
    )
    assert pc.all(pc.is_null(unscored.column("risk_score"))).as_py()
    pq.write_table(unscored, part / "part-extra.parquet")
    assert [r["patient_id"] for r in latest_risk(lake)] == ["P7"]  # NEW's latest window: insufficient_data
