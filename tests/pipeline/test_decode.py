from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import T0, raw_batch

from pipeline.batch import RawBatch
from pipeline.contract import stream_contract
from pipeline.decode import FALLBACK_CHUNK, _decode_one, decode, parse_event_time
from pipeline.readings import to_readings


def hr(i: int, ts: object = None, **extra: object) -> bytes:
    doc = {
        "patient_id": "P1",
        "device_id": "hr-1",
        "ts": T0 + i * 1000 if ts is None else ts,
        "heart_rate_bpm": 70 + i % 5,
        **extra,
    }
    return json.dumps(doc).encode()


def test_bulk_path_decodes_every_message_with_mixed_timestamp_formats() -> None:
    values = [hr(i) if i % 2 else hr(i, ts=f"2026-11-22T00:00:{i % 60:02d}.500+00:00") for i in range(1000)]
    d = decode(raw_batch("heart_rate", values), stream_contract("heart_rate"))
    assert len(d.table) == 1000 and len(d.rejected_src) == 0
    assert d.table.column("event_time").null_count == 0
    by_src = dict(
        zip(
            d.table.column("src").to_pylist(),
            d.table.column("event_time").cast(pa.int64()).to_pylist(),
            strict=True,
        )
    )
    assert by_src[1] == T0 + 1000
    assert by_src[2] == T0 + 2500


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty_message"),
        (None, "empty_message"),
        (b'{"patient_id": "P1", "ts": 1', "invalid_json"),
        (b"\xff\xfe{}", "not_utf8"),
        (b"[1, 2]", "not_an_object"),
        (b'{"patient_id":"P1","device_id":"d","ts":1,"heart_rate_bpm":"fast"}', "wrong_type"),
        (b'{"patient_id":"P1","device_id":"d","ts":1,"heart_rate_bpm":NaN}', "not_finite"),
        (b'{"patient_id":"P1","device_id":"d","ts":1,"heart_rate_bpm":-Infinity}', "not_finite"),
        (b'{"patient_id":7,"device_id":"d","ts":1,"heart_rate_bpm":70}', "wrong_type"),
        (b'{"patient_id":"P1","device_id":"d","ts":true,"heart_rate_bpm":70}', "wrong_type"),
        (b"{" + b" " * 70_000 + b"}", "oversized_message"),
    ],
)
def test_a_bad_message_is_isolated_with_its_reason(value: bytes | None, reason: str) -> None:
    n = FALLBACK_CHUNK * 3
    values: list[bytes | None] = [hr(i) for i in range(n)]
    values[FALLBACK_CHUNK + 7] = value
    d = decode(raw_batch("heart_rate", values), stream_contract("heart_rate"))
    assert d.rejected_src.tolist() == [FALLBACK_CHUNK + 7]
    assert d.rejected_reason == [reason]
    assert len(d.table) == n - 1


@pytest.mark.parametrize(
    "value",
    [
        b'{"patient_id":"P1","device_id":"d","ts":1,"heart_rate_bpm":70,"heart_rate_bpm":900}',  # a field twice
        b'{"patient_id":"P1","device_id":"d","ts":1,"heart_rate_bpm":70,"heart_rate_bpm":NaN}',
        b'{"patient_id":"P1","device_id":"d","ts":"2026-11-22T00:00:00Z","heart_rate_bpm":"fast"}',
        b'{"patient_id":"P1","device_id":"d","ts":1,"heart_rate_bpm":7',  # truncated
        b'{"patient_id":"P1","device_id":"d","ts":1,"heart_rate_bpm":70} ',  # valid, ends in a space
        b'{"patient_id":"P1","device_id":"a\\":\\"heart_rate_bpm\\":\\"x","ts":1,"heart_rate_bpm":70}',
        b'{"patient_id":"P1","device_id":"d","ts" : "2026-11-22T00:00:00Z","heart_rate_bpm":70}',
    ],
)
def test_messages_the_byte_scan_routes_to_the_exact_path_decode_as_the_exact_decoder_says(value: bytes) -> None:
    """The scan only chooses a path; what a message decodes to is the exact decoder's answer either way."""
    values = [hr(i) for i in range(300)]
    values[150] = value
    contract = stream_contract("heart_rate")
    d = decode(raw_batch("heart_rate", values), contract)
    row, reason, _ = _decode_one(value, contract)
    if row is None:
        assert d.rejected_src.tolist() == [150] and d.rejected_reason == [reason]
    else:
        assert len(d.rejected_src) == 0 and len(d.table) == 300
        i = d.table.column("src").to_pylist().index(150)
        assert d.table.column("heart_rate_bpm")[i].as_py() == row["heart_rate_bpm"]


def test_a_batch_whose_values_are_a_slice_of_a_larger_array_decodes_as_a_fresh_one() -> None:
    """The consumer hands out slices of a fetch's columns: bytes before and after them are not theirs."""
    values = [hr(i) for i in range(40)]
    values[5] = '{"patient_id":"\u00e9\\n"}'.encode()  # non-ASCII and a newline escape before the slice
    values[33] = b'{"patient_id":"P1"}\n{"x":1}'  # a raw newline after it
    whole = pa.array(values, pa.binary())
    fresh = decode(raw_batch("heart_rate", values[10:30]), stream_contract("heart_rate"))
    sliced_batch = raw_batch("heart_rate", values[10:30])
    sliced_batch.values = whole.slice(10, 20)
    sliced = decode(sliced_batch, stream_contract("heart_rate"))
    assert sliced.table.equals(fresh.table)
    assert sliced.rejected_src.tolist() == fresh.rejected_src.tolist() == []


def test_two_objects_in_one_message_are_not_misaligned() -> None:
    values = [hr(i) for i in range(10)]
    values[3] = hr(3) + hr(4)  # one message, two objects: must not shift the rows
    d = decode(raw_batch("heart_rate", values), stream_contract("heart_rate"))
    assert d.rejected_src.tolist() == [3] and d.rejected_reason == ["invalid_json"]
    src = d.table.column("src").to_pylist()
    assert sorted(src) == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_missing_fields_become_nulls_for_the_suites_and_unknown_fields_are_ignored() -> None:
    values = [
        b'{"patient_id":"P1","ts":1795305600000,"heart_rate_bpm":70,"battery":80}',
        b'{"patient_id":"P1","device_id":"d","ts":1795305600000}',
    ]
    d = decode(raw_batch("heart_rate", values), stream_contract("heart_rate"))
    rows = sorted(d.table.to_pylist(), key=lambda r: r["src"])
    assert rows[0]["device_id"] is None and rows[0]["heart_rate_bpm"] == 70
    assert rows[1]["heart_rate_bpm"] is None
    assert "battery" not in d.table.column_names


def test_glucose_in_mmol_is_converted_and_censoring_is_flagged() -> None:
    values = [
        b'{"patient_id":"P1","device_id":"c","ts":1795305600000,"glucose_mmol_l":5.5}',
        b'{"patient_id":"P1","device_id":"c","ts":1795305900000,"glucose_mg_dl":40}',
        b'{"patient_id":"P1","device_id":"c","ts":1795306200000,"glucose_mg_dl":401}',
    ]
    contract = stream_contract("glucose")
    d = decode(raw_batch("glucose", values), contract)
    r = to_readings(d.table, contract).sort_by("src")
    assert r.column("value").to_pylist() == pytest.approx([5.5 * 18.016, 40.0, 400.0])
    assert r.column("censored").to_pylist() == [False, True, True]


def test_event_time_parsing() -> None:
    ts = pa.array(
        [
            "1795305600000",
            "2026-11-22T00:00:00Z",
            "2026-11-22T01:00:00+01:00",
            "2026-11-22T00:00:00.123456Z",
            "2026-11-22T00:00:00",
            "yesterday",
            None,
        ]
    )
    got = parse_event_time(ts).cast(pa.int64()).to_pylist()
    assert got[:4] == [T0, T0, T0, T0 + 123]
    assert got[4:] == [None, None, None]  # no offset, garbage, missing


def test_key_and_provenance_columns() -> None:
    d = decode(
        raw_batch("heart_rate", [hr(0), hr(1)], keys=[b"P1", b"P2"], kafka_ts=T0 + 5000),
        stream_contract("heart_rate"),
    )
    t = d.table.sort_by("src")
    assert t.column("key").to_pylist() == ["P1", "P2"]
    assert t.column("offset").to_pylist() == [0, 1]
    assert np.allclose(t.column("clock_skew_s").to_numpy(), [5.0, 4.0])


@pytest.mark.parametrize("with_invalid", [False, True])
def test_non_ascii_text_is_kept_and_only_invalid_utf8_inside_a_string_is_rejected(with_invalid: bool) -> None:
    # valid UTF-8 beyond ASCII (raw bytes, not \u escapes): the bulk path takes it
    values = [
        hr(i, device_id="hr-café-Ü").replace(b"\\u00e9", "é".encode()).replace(b"\\u00dc", "Ü".encode())
        for i in range(500)
    ]
    assert b"\xc3\xa9" in values[0]
    if with_invalid:
        values[123] = b'{"patient_id":"P1","device_id":"hr-\xff","ts":1,"heart_rate_bpm":70}'
    d = decode(raw_batch("heart_rate", values), stream_contract("heart_rate"))
    assert len(d.table) == 500 - with_invalid
    assert set(d.table.column("device_id").to_pylist()) == {"hr-café-Ü"}
    assert d.rejected_src.tolist() == ([123] if with_invalid else [])
    assert list(d.rejected_reason) == (["not_utf8"] if with_invalid else [])


def test_a_topics_polls_join_into_one_batch_with_headers_at_their_new_positions() -> None:
    """The consumer turns each poll's records of a partition into a RawBatch at once and joins a topic's
    parts at the end: columns in order, and the (rare) headers moved to their row in the joined batch."""
    from pipeline.kafka_io import _concat

    def part(partition: int, offsets: list[int], headers: dict[int, list[tuple[str, bytes]]]) -> RawBatch:
        n = len(offsets)
        return RawBatch(
            stream="heart_rate",
            topic="vitals.heart_rate",
            keys=[b"P%d" % o for o in offsets],
            values=[b"{}"] * n,
            partitions=np.full(n, partition, dtype=np.int32),
            offsets=np.array(offsets, dtype=np.int64),
            timestamps_ms=np.array(offsets, dtype=np.int64) * 1000,
            headers=headers,
        )

    joined = _concat([part(0, [5, 6, 7], {1: [("trace", b"a")]}), part(1, [0, 1], {0: [("trace", b"b")]})])

    assert joined.offsets.tolist() == [5, 6, 7, 0, 1] and joined.partitions.tolist() == [0, 0, 0, 1, 1]
    assert joined.keys.to_pylist() == [b"P5", b"P6", b"P7", b"P0", b"P1"]
    assert joined.headers == {1: [("trace", b"a")], 3: [("trace", b"b")]}


def test_shared_codes_give_one_id_one_code_across_columns() -> None:
    from pipeline.readings import shared_codes

    windows = pa.chunked_array([["P2", "P1"], ["P2"]])
    events = pa.array(["P1", "P3", "P2"])
    w, e = shared_codes(windows, events)
    assert w.dtype == np.int64 and len(w) == 3 and len(e) == 3
    assert w[0] == w[2] == e[2] and w[1] == e[0] and len({*w.tolist(), *e.tolist()}) == 3
    empty, other = shared_codes(pa.array([], pa.string()), events)
    assert len(empty) == 0 and len(set(other.tolist())) == 3


def test_span_days_sums_each_ids_first_to_last_time_plus_the_pad() -> None:
    from pipeline.readings import span_days

    day = 86_400_000
    ids = pa.array(["A", "B", "A", "B"])
    t = np.array([0, day, day // 2, day], dtype=np.int64)  # A spans half a day, B one instant
    assert span_days(ids, t, pad_ms=day // 4) == pytest.approx(0.75 + 0.25)
    assert span_days(pa.array([], pa.string()), np.array([], np.int64)) == 0.0
