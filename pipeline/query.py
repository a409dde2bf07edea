"""DuckDB over the lake: views `risk_scores`, `windows`, `quarantine` on the hive-partitioned Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.sink import DATASETS


def connect(lake: Path) -> Any:
    import duckdb

    con = duckdb.connect()
    for name in DATASETS:
        files = lake / name
        if any(files.glob("date=*/*.parquet")):
            con.execute(
                f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{files.as_posix()}/date=*/*.parquet', "
                "hive_partitioning = true, union_by_name = true)"
            )
    return con


def top_patients(lake: Path, limit: int = 5) -> list[tuple[Any, ...]]:
    """Each patient's latest score, highest first."""
    con = connect(lake)
    try:
        rows: list[tuple[Any, ...]] = con.execute(
            """
            SELECT patient_id, window_end, round(risk_score, 3) AS risk_score, risk_level
            FROM risk_scores
            QUALIFY row_number() OVER (PARTITION BY patient_id ORDER BY window_end DESC) = 1
            ORDER BY risk_score DESC, patient_id LIMIT ?
            """,
            [limit],
        ).fetchall()
        return rows
    except Exception:  # no risk_scores yet
        return []
    finally:
        con.close()
