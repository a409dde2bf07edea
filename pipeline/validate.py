"""Expectation suites (Great Expectations JSON in `schemas/expectations/`) applied to Arrow tables.

Two engines read the same suite:
- `route` compiles each expectation to Arrow compute and returns, per row, the first failing expectation's
  `meta.quarantine_reason`. This is the hot path: it costs milliseconds per 100k rows.
- `run_great_expectations` runs the suite in Great Expectations itself (pandas) and returns its validation
  result, which the flow records. Tests check that both engines flag exactly the same rows.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.contract import suite_json

SUPPORTED = (
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_between",
    "expect_column_value_lengths_to_be_between",
    "expect_column_values_to_be_in_set",
    "expect_column_pair_values_to_be_equal",
    "expect_compound_columns_to_be_unique",
    "expect_column_values_to_match_regex",
)


@dataclass(frozen=True)
class Routing:
    """Per row: None when every expectation passed, else the reason of the first one that failed."""

    failed: np.ndarray  # bool
    reason: np.ndarray  # object array of str | None
    expectation: np.ndarray  # object array: the failing expectation's type

    def expectation_labels(self) -> list[str | None]:
        return [None if r is None else str(r) for r in self.reason]


def route(table: pa.Table, suite_name: str) -> Routing:
    suite = suite_json(suite_name)
    n = len(table)
    failed = np.zeros(n, dtype=bool)
    reason = np.full(n, None, dtype=object)
    which = np.full(n, None, dtype=object)
    for exp in suite["expectations"]:
        bad = unexpected_mask(table, exp["type"], exp["kwargs"])
        new = bad & ~failed
        if new.any():
            label = (
                exp["type"] + ":" + str(exp["kwargs"].get("column") or ",".join(exp["kwargs"].get("column_list", [])))
            )
            reason[new] = exp.get("meta", {}).get("quarantine_reason", label)
            which[new] = exp["type"]
            failed |= new
    return Routing(failed=failed, reason=reason, expectation=which)


def unexpected_mask(table: pa.Table, kind: str, kw: dict[str, Any]) -> np.ndarray:
    """The rows Great Expectations would list as unexpected, as a boolean mask (GE skips nulls)."""
    n = len(table)
    if kind == "expect_column_pair_values_to_be_equal":
        a, b = table.column(kw["column_A"]), table.column(kw["column_B"])
        present = pc.and_(pc.is_valid(a), pc.is_valid(b))
        return _np(pc.and_(present, pc.not_equal(a, b)))
    if kind == "expect_compound_columns_to_be_unique":
        keys = table.select(kw["column_list"]).to_pandas()
        return np.asarray(keys.duplicated(keep=False).to_numpy(), dtype=bool)
    col = table.column(kw["column"])
    if kind == "expect_column_values_to_not_be_null":
        return _np(pc.is_null(col, nan_is_null=True))
    valid = pc.is_valid(col)
    if kind == "expect_column_values_to_be_between":
        bad = pc.is_nan(col) if pa.types.is_floating(col.type) else pa.array(np.zeros(n, bool))
        bad = pc.or_(bad, _outside(col, kw.get("min_value"), kw.get("max_value"), kw))
        return _np(pc.and_(valid, bad))
    if kind == "expect_column_value_lengths_to_be_between":
        return _np(pc.and_(valid, _outside(pc.utf8_length(col), kw.get("min_value"), kw.get("max_value"), kw)))
    if kind == "expect_column_values_to_match_regex":
        return _np(pc.and_(valid, pc.invert(pc.match_substring_regex(col, kw["regex"]))))
    if kind == "expect_column_values_to_be_in_set":
        return _np(pc.and_(valid, pc.invert(pc.is_in(col, value_set=pa.array(kw["value_set"], col.type)))))
    raise NotImplementedError(f"expectation {kind} has no Arrow compilation; supported: {', '.join(SUPPORTED)}")


def _outside(col: Any, lo: float | None, hi: float | None, kw: dict[str, Any]) -> Any:
    bad = pa.array(np.zeros(len(col), bool))
    if lo is not None:
        bad = pc.or_(bad, pc.less_equal(col, lo) if kw.get("strict_min") else pc.less(col, lo))
    if hi is not None:
        bad = pc.or_(bad, pc.greater_equal(col, hi) if kw.get("strict_max") else pc.greater(col, hi))
    return bad


def _np(mask: Any) -> np.ndarray:
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


# --- Great Expectations itself -------------------------------------------------------------------------


@cache
def _ge_context() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    # This one sets its own level: it announced GE's temporary docs directory on every run.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


@cache
def _ge_batch_definition(suite_name: str) -> tuple[Any, Any]:
    import great_expectations as gx

    ctx = _ge_context()
    suite = ctx.suites.add(gx.ExpectationSuite(**{k: v for k, v in suite_json(suite_name).items() if k != "id"}))
    source = ctx.data_sources.add_pandas(name=f"vitalstream_{suite_name}")
    asset = source.add_dataframe_asset(name=suite_name)
    return asset.add_batch_definition_whole_dataframe(suite_name), suite


def run_great_expectations(table: pa.Table, suite_name: str, result_format: str = "SUMMARY") -> dict[str, Any]:
    """Validate `table` with Great Expectations; returns the validation result as a JSON-able dict."""
    batch_definition, suite = _ge_batch_definition(suite_name)
    frame = table.to_pandas(types_mapper=None)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format=result_format)
    doc: dict[str, Any] = result.to_json_dict()
    return doc


def ge_unexpected_rows(table: pa.Table, suite_name: str) -> dict[str, set[int]]:
    """Per expectation (type + column), the row positions GE lists as unexpected (for equivalence tests)."""
    doc = run_great_expectations(table, suite_name, result_format="COMPLETE")
    out: dict[str, set[int]] = {}
    for r in doc["results"]:
        cfg = r["expectation_config"]
        key = f"{cfg['type']}:{cfg['kwargs'].get('column') or cfg['kwargs'].get('column_A') or ''}"
        idx = r["result"].get("unexpected_index_list") or []
        out[key] = {int(i) if not isinstance(i, dict) else int(next(iter(i.values()))) for i in idx}
    return out
