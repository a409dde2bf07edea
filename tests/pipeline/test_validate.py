"""The Arrow compilation of each suite must flag exactly the rows Great Expectations flags."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import T0, raw_batch

from pipeline.contract import STREAMS, readings_suite_name, stream_contract, suite_json
from pipeline.decode import decode
from pipeline.validate import SUPPORTED, ge_unexpected_rows, route, unexpected_mask


def messy_heart_rate(n: int = 400, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    values, keys, kafka_ts = [], [], []
    for i in range(n):
        doc: dict[str, object] = {
            "patient_id": f"P{i % 7}",
            "device_id": f"hr-{i % 7}",
            "ts": T0 + i * 1000,
            "heart_rate_bpm": float(rng.normal(80, 60)),
        }
        roll = rng.random()
        if roll < 0.05:
            del doc["device_id"]
        elif roll < 0.10:
            doc["patient_id"] = "x" * 70
        elif roll < 0.15:
            del doc["heart_rate_bpm"]
        elif roll < 0.20:
            doc["ts"] = "not a time"
        values.append(json.dumps(doc).encode())
        keys.append(b"P%d" % (i % 7) if rng.random() > 0.05 else b"Q9")
        kafka_ts.append(T0 + i * 1000 - (10_000_000 if rng.random() < 0.05 else 0))
    return decode(raw_batch("heart_rate", values, keys, kafka_ts), stream_contract("heart_rate")).table


def test_every_suite_uses_only_compiled_expectations() -> None:
    for name in [readings_suite_name(s) for s in STREAMS] + ["windows"]:
        for exp in suite_json(name)["expectations"]:
            assert exp["type"] in SUPPORTED, (name, exp["type"])


def test_arrow_routing_matches_great_expectations_row_for_row() -> None:
    table = messy_heart_rate().drop_columns(["src"])
    suite = "heart_rate_readings"
    ge = ge_unexpected_rows(table, suite)
    total_flagged = 0
    for exp in suite_json(suite)["expectations"]:
        kw = exp["kwargs"]
        key = f"{exp['type']}:{kw.get('column') or kw.get('column_A') or ''}"
        mine = set(np.flatnonzero(unexpected_mask(table, exp["type"], kw)).tolist())
        assert mine == ge[key], key
        total_flagged += len(mine)
    assert total_flagged > 40  # the fixture really exercises the rules


def test_route_reports_the_first_failing_expectation() -> None:
    table = messy_heart_rate().drop_columns(["src"])
    r = route(table, "heart_rate_readings")
    reasons = set(r.reason[r.failed].tolist())
    assert {
        "missing_device_id",
        "bad_patient_id",
        "missing_value",
        "bad_timestamp",
        "key_mismatch",
        "timestamp_out_of_bounds",
        "heart_rate_out_of_range",
    } <= reasons
    assert all(x is None for x in r.reason[~r.failed])


@pytest.mark.parametrize("stream", STREAMS)
def test_each_stream_example_passes_its_suite(stream: str) -> None:
    contract = stream_contract(stream)
    example = json.dumps(contract.example).encode()
    table = decode(raw_batch(stream, [example], keys=[b"P000042"], kafka_ts=T0), contract).table
    # the examples carry fixed dates; judge skew against their own event time
    table = table.set_column(table.schema.get_field_index("clock_skew_s"), "clock_skew_s", pa.array([1.0]))
    assert not route(table, readings_suite_name(stream)).failed.any()
