"""DuckDB over the lake: views `risk_scores`, `windows`, `quarantine`, `alerts`, `acks` on the hive-partitioned
Parquet."""

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


def latest_risk(lake: Path, limit: int = 10, recent_dates: int = 2) -> list[dict[str, Any]]:
    """Each patient's latest window score with the per-condition probabilities, highest first (patients whose
    latest window is `insufficient_data` are left out: they have no score to rank); only the
    newest `recent_dates` date partitions are read, so the cost does not grow with the lake's history
    (every scoring run publishes this)."""
    dates = sorted(p.name.removeprefix("date=") for p in (lake / "risk_scores").glob("date=*"))[-recent_dates:]
    if not dates:
        return []
    import duckdb

    con = connect(lake)
    try:
        rel = con.execute(
            """
            SELECT * FROM (
                SELECT patient_id, strftime(window_end, '%Y-%m-%d %H:%M') AS window_end_utc, round(risk_score, 3)
                    AS risk_score, risk_level, round(p_hypoglycaemia, 3) AS p_hypoglycaemia,
                    round(p_hyperglycaemia, 3) AS p_hyperglycaemia, round(p_cardiac, 3) AS p_cardiac,
                    round(p_respiratory, 3) AS p_respiratory, round(p_fall, 3) AS p_fall, context_windows
                FROM risk_scores WHERE date >= CAST(? AS DATE)
                QUALIFY row_number() OVER (PARTITION BY patient_id ORDER BY window_end DESC) = 1
            ) WHERE risk_score IS NOT NULL  -- a latest window with insufficient data ranks nobody
            ORDER BY risk_score DESC, patient_id LIMIT ?
            """,
            [dates[0], limit],
        )
        names = [d[0] for d in rel.description]
        return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]
    except duckdb.CatalogException:  # no risk_scores view: nothing scored yet
        return []
    finally:
        con.close()
