"""Operations on the lake after it is written: compaction, Great Expectations on the quality samples and
the Data Docs site, per-patient reports, DuckDB queries, consumer lag."""
