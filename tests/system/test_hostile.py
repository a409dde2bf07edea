"""Hostile and broken input: every unscorable message is quarantined with a reason and mirrored to the
dead-letter topic, the other patients carry on, and the accounting identity holds exactly.

Most fuzz examples run through the engine (plain Arrow, no broker); one property runs the real flow over the
embedded broker and reads the dead-letter topic back. FUZZ_EXAMPLES / FUZZ_BROKER_EXAMPLES scale them
(`make soak`).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from conftest import T0, LakeEngine, raw_batch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from models.lstm import load_checkpoint
from models.scorer import Scorer
from pipeline.batch import RawBatch
from pipeline.contract import STREAMS, stream_contract
from pipeline.decode import MAX_MESSAGE_BYTES
from pipeline.validate import ge_unexpected_rows, unexpected_mask
from sim.broker import EmbeddedBroker

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "80"))
FUZZ_BROKER_EXAMPLES = int(os.environ.get("FUZZ_BROKER_EXAMPLES", "1"))
MIN = 60_000
FIELD = {s: stream_contract(s).value_field for s in STREAMS}
KNOWN_REASONS = {
    "empty_message",
    "oversized_message",
    "not_utf8",
    "invalid_json",
    "not_an_object",
    "wrong_type",
    "not_finite",
    "late",
}
for _s in STREAMS:
    KNOWN_REASONS |= {
        e["meta"]["quarantine_reason"]
        for e in __import__("pipeline.contract", fromlist=["suite_json"]).suite_json(f"{_s}_readings")["expectations"]
    }
TRIED = Counter[str]()  # messages tried per property, printed at the end (figures for the issue)


def good(stream: str, pid: str, t_ms: int, value: float = 80.0) -> bytes:
    doc: dict[str, Any] = {"patient_id": pid, "device_id": f"{stream}-{pid}", "ts": t_ms}
    doc[FIELD[stream]] = bool(value > 100) if stream == "fall" else value
    return json.dumps(doc).encode()


@functools.cache
def scorer(ckpt: Path) -> Scorer:
    return Scorer(load_checkpoint(ckpt))  # loaded once: examples differ in state, not in the model


def engine(lake: Path, ckpt: Path) -> LakeEngine:
    return LakeEngine(lake, scorer(ckpt))


# --- every kind, one at a time ----------------------------------------------------------------------------

HR = "heart_rate"
CASES: list[tuple[str, bytes | None, bytes | None, int, str]] = [
    # (name, key, value, kafka timestamp, expected reason)
    ("invalid JSON", b"P1", b'{"patient_id": "P1", ', T0, "invalid_json"),
    ("not UTF-8", b"P1", b'{"patient_id": "P1\xff\xfe"}', T0, "not_utf8"),
    ("not an object", b"P1", b"[1, 2, 3]", T0, "not_an_object"),
    ("wrong type", b"P1", good(HR, "P1", T0).replace(b"80.0", b'"fast"'), T0, "wrong_type"),
    ("missing value", b"P1", b'{"patient_id": "P1", "device_id": "d", "ts": %d}' % T0, T0, "missing_value"),
    ("missing patient", b"P1", b'{"device_id": "d", "ts": %d, "heart_rate_bpm": 70}' % T0, T0, "missing_patient_id"),
    ("NaN", b"P1", good(HR, "P1", T0).replace(b"80.0", b"NaN"), T0, "not_finite"),
    ("infinity", b"P1", good(HR, "P1", T0).replace(b"80.0", b"-Infinity"), T0, "not_finite"),
    ("huge number", b"P1", good(HR, "P1", T0).replace(b"80.0", b"1e400"), T0, "not_finite"),
    ("out of range", b"P1", good(HR, "P1", T0, 900.0), T0, "heart_rate_out_of_range"),
    ("far future", b"P1", good(HR, "P1", T0 + 400 * 86_400_000), T0, "timestamp_out_of_bounds"),
    ("far past", b"P1", good(HR, "P1", T0 - 40 * 86_400_000), T0, "timestamp_out_of_bounds"),
    (
        "year 1",
        b"P1",
        good(HR, "P1", T0).replace(b'"ts": %d' % T0, b'"ts": "0001-01-01T00:00:00Z"'),
        T0,
        "timestamp_out_of_bounds",
    ),
    (
        "no timezone",
        b"P1",
        good(HR, "P1", T0).replace(b'"ts": %d' % T0, b'"ts": "2026-11-22T00:00:00"'),
        T0,
        "bad_timestamp",
    ),
    ("unknown patient", b"P 1;", good(HR, "P 1;", T0), T0, "unknown_patient"),
    ("missing key", None, good(HR, "P1", T0), T0, "missing_key"),
    ("key disagrees", b"P2", good(HR, "P1", T0), T0, "key_mismatch"),
    ("key not UTF-8", b"P\xff", good(HR, "P1", T0), T0, "key_mismatch"),
    ("empty", b"P1", b"", T0, "empty_message"),
    ("null value", b"P1", None, T0, "empty_message"),
    ("oversized", b"P1", b'{"patient_id": "P1", "pad": "' + b"x" * MAX_MESSAGE_BYTES + b'"}', T0, "oversized_message"),
    ("two lines", b"P1", good(HR, "P1", T0) + b"\n" + good(HR, "P1", T0), T0, "invalid_json"),
]


@pytest.mark.parametrize(("name", "key", "value", "kafka_ts", "reason"), CASES, ids=[c[0] for c in CASES])
def test_each_hostile_message_is_quarantined_with_its_reason_and_the_rest_is_scored(
    tmp_path: Path, tiny_checkpoint: Path, name: str, key: bytes | None, value: bytes | None, kafka_ts: int, reason: str
) -> None:
    e = engine(tmp_path, tiny_checkpoint)
    values: list[bytes | None] = [good(HR, "P9", T0 + s * 1000) for s in range(0, 600, 10)]
    keys: list[bytes | None] = [b"P9"] * len(values)
    ts = [T0 + s * 1000 for s in range(0, 600, 10)]
    values.insert(5, value)
    keys.insert(5, key)
    ts.insert(5, kafka_ts)
    out = e.process([raw_batch(HR, values, keys, ts)], drain=True)
    assert dict(out.counts.quarantined) == {reason: 1}
    q = out.dead_letters.to_pylist()[0]
    assert (q["key"], q["value"], q["offset"]) == (key, value, 5)  # the original bytes, untouched
    assert out.counts.windowed == len(values) - 1 and out.counts.windows == 2  # P9 is scored regardless


def test_duplicates_and_a_burst_of_out_of_order_data_are_counted_not_lost(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    e = engine(tmp_path, tiny_checkpoint)
    minutes = list(range(0, 30))
    values = [good(HR, "P1", T0 + m * MIN) for m in minutes]
    e.write(e.process([raw_batch(HR, values, [b"P1"] * len(values), [T0 + m * MIN for m in minutes])]))
    # A burst: the first 20 minutes again (exact duplicates of closed windows -> late), shuffled, plus
    # 5 new out-of-order readings inside still-open windows and their exact duplicates.
    rng = np.random.default_rng(3)
    burst = [good(HR, "P1", T0 + m * MIN) for m in minutes[:20]]
    fresh = [good(HR, "P1", T0 + m * MIN + 30_000) for m in range(25, 30)]
    burst += fresh + fresh
    order = rng.permutation(len(burst))
    shuffled = [burst[i] for i in order]
    out = e.process([raw_batch(HR, shuffled, [b"P1"] * len(shuffled), T0 + 31 * MIN)], drain=True)
    c = out.counts
    assert c.quarantined == {"late": 20}
    assert c.duplicates == 5
    assert c.consumed == c.windowed + c.duplicates + c.quarantined_total + out.pending_after - out.pending_before


def test_arrow_routing_of_the_id_rules_matches_great_expectations() -> None:
    from pipeline.decode import decode

    pids = ["P1", "P 2", "p-3.x:y", "Ünïcode", "P\t5", "-lead", "ok_6"]
    values: list[bytes | None] = [good(HR, p, T0) for p in pids]
    keys: list[bytes | None] = [p.encode() if i % 3 else None for i, p in enumerate(pids)]
    table = decode(raw_batch(HR, values, keys), stream_contract(HR)).table.drop_columns(["src"])
    ge = ge_unexpected_rows(table, "heart_rate_readings")
    regex = {"column": "patient_id", "regex": "^[A-Za-z0-9][A-Za-z0-9._:-]*$"}
    mine = set(np.flatnonzero(unexpected_mask(table, "expect_column_values_to_match_regex", regex)).tolist())
    assert mine == ge["expect_column_values_to_match_regex:patient_id"] == {1, 3, 4, 5}
    mine = set(
        np.flatnonzero(unexpected_mask(table, "expect_column_values_to_not_be_null", {"column": "key"})).tolist()
    )
    assert mine == ge["expect_column_values_to_not_be_null:key"] == {0, 3, 6}


# --- property-based fuzzing -------------------------------------------------------------------------------

PATIENTS = ("P1", "P2", "P3", "P4")
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def message(draw: st.DrawFn, stream: str) -> tuple[bytes | None, bytes | None, int]:
    """(key, value, Kafka timestamp): a valid reading most of the time, else something hostile."""
    pid = draw(st.sampled_from(PATIENTS))
    minute = draw(st.integers(min_value=0, max_value=40))
    t = T0 + minute * MIN + draw(st.integers(min_value=0, max_value=59)) * 1000
    value = draw(st.floats(min_value=30, max_value=200))
    doc: dict[str, Any] = {"patient_id": pid, "device_id": f"{stream}-{pid}", "ts": t}
    doc[FIELD[stream]] = value > 150 if stream == "fall" else value
    key: bytes | None = pid.encode()
    kind = draw(st.sampled_from(["valid"] * 6 + ["field", "drop", "bytes", "key", "skew", "iso", "literal", "mangle"]))
    if kind == "field":  # any JSON value in any contract field
        doc[draw(st.sampled_from(sorted(doc)))] = draw(json_value)
    elif kind == "drop":
        del doc[draw(st.sampled_from(sorted(doc)))]
    elif kind == "bytes":
        return key, draw(st.one_of(st.none(), st.binary(max_size=40), st.just(b"x" * (MAX_MESSAGE_BYTES + 1)))), t
    elif kind == "key":
        key = draw(st.one_of(st.none(), st.binary(max_size=8), st.sampled_from(PATIENTS).map(str.encode)))
    elif kind == "skew":
        doc["ts"] = t + draw(st.integers(min_value=-(10**14), max_value=10**14))
    elif kind == "iso":
        doc["ts"] = draw(st.datetimes(timezones=st.timezones() | st.none())).isoformat()
    raw = json.dumps(doc, allow_nan=True).encode()
    if kind == "literal":  # NaN / Infinity literals JSON does not have
        raw = raw.replace(f"{value}".encode(), draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999"])))
    elif kind == "mangle":  # cut, splice or flip bytes of a valid message
        i = draw(st.integers(min_value=0, max_value=len(raw)))
        raw = raw[:i] + draw(st.binary(max_size=4)) + raw[i + draw(st.integers(min_value=0, max_value=4)) :]
    return key, raw, t


@st.composite
def batches(draw: st.DrawFn) -> list[RawBatch]:
    """One micro-batch: a few streams, each a list of messages (offsets continue across batches)."""
    out = []
    for stream in draw(st.lists(st.sampled_from(STREAMS), min_size=1, max_size=4, unique=True)):
        msgs = draw(st.lists(message(stream), min_size=1, max_size=25))
        keys, values, ts = zip(*msgs, strict=True)
        out.append(raw_batch(stream, list(values), list(keys), list(ts)))
    return out


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the default suite is reproducible; make soak explores new examples
)
@given(st.lists(batches(), min_size=1, max_size=4))
def test_fuzzed_batches_never_crash_the_engine_and_the_accounting_holds(
    tiny_checkpoint: Path, micro_batches: list[list[RawBatch]]
) -> None:
    with tempfile.TemporaryDirectory() as lake:
        e = engine(Path(lake), tiny_checkpoint)
        consumed = balance = 0
        for i, raws in enumerate([*micro_batches, []]):
            out = e.process(raws, drain=i == len(micro_batches))  # the last, empty batch closes everything
            c = out.counts
            assert (
                c.consumed == c.windowed + c.duplicates + c.quarantined_total + out.pending_after - out.pending_before
            )
            assert len(out.quarantine) == len(out.dead_letters) == c.quarantined_total
            assert set(c.quarantined) <= KNOWN_REASONS
            assert len(out.risk_scores) == len(out.windows)
            consumed += c.consumed
            balance += c.windowed + c.duplicates + c.quarantined_total
        assert e.pending == 0 and consumed == balance
        TRIED["engine"] += consumed


# --- through the real broker and flow ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(session_broker: EmbeddedBroker) -> EmbeddedBroker:
    return session_broker


_runs = iter(range(1000))


def read(path: Path) -> pa.Table:
    if not path.exists():
        return pa.table({"reading_count": pa.array([], pa.int32()), "topic": pa.array([], pa.string())})
    return ds.dataset(path, format="parquet", partitioning="hive").to_table()


@pytest.mark.integration
@settings(
    max_examples=FUZZ_BROKER_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # a failure is reported as found: shrinking a flow run takes minutes
)
@given(msgs=st.lists(st.tuples(st.sampled_from(STREAMS), st.data()), min_size=300, max_size=400))
def test_fuzzed_messages_through_the_broker_and_flow_reach_the_lake_or_the_dead_letter_topic(
    broker: Any, prefect_session: None, msgs: list[tuple[str, st.DataObject]]
) -> None:
    from kafka import KafkaConsumer

    from flows.scoring import scoring_flow
    from pipeline.config import Settings
    from pipeline.kafka_io import ensure_topics
    from pipeline.kafka_publish import producer
    from pipeline.kafka_settings import KafkaSettings

    run = next(_runs)
    prefix = f"fuzz{run}."
    kafka = KafkaSettings(broker.bootstrap, topic_prefix=prefix, partitions=2)
    ensure_topics(kafka)
    prod = producer(kafka)
    futures = []
    for i, (stream, data) in enumerate(msgs):
        key, value, ts = data.draw(message(stream))
        headers = [("trace-id", b"%d" % i)] if i % 3 == 0 else []  # the dead letter must carry them
        futures.append(
            (
                prod.send(kafka.topic(stream), key=key, value=value, timestamp_ms=ts, headers=headers),
                key,
                value,
                headers,
            )
        )
    prod.flush()
    prod.close()
    sent = {}
    for f, key, value, headers in futures:
        md = f.get(timeout=10)
        sent[(md.topic, md.partition, md.offset)] = (key, value, headers)

    with tempfile.TemporaryDirectory() as lake:
        s = scoring_flow(
            Settings(topic_prefix=prefix, lake=Path(lake), group=f"fuzz{run}"), broker.bootstrap, mode="drain"
        )
        assert s["consumed"] == len(sent) and s["balanced"] and s["pending_after"] == 0
        quarantine = read(Path(lake) / "quarantine")
        windows = read(Path(lake) / "windows")
    assert len(sent) == sum(windows.column("reading_count").to_pylist()) + s["duplicates"] + len(quarantine)

    consumer = KafkaConsumer(
        kafka.dead_letter_topic(),
        bootstrap_servers=[broker.bootstrap],
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    dlq = list(consumer)
    consumer.close()
    lake_rows = {(r["topic"], r["partition"], r["offset"]): r for r in quarantine.to_pylist()}
    dead = {}
    for m in dlq:
        h = dict(m.headers)
        topic, part, offset = h["vitalstream.source"].decode().rsplit(":", 2)
        dead[(topic, int(part), int(offset))] = (m, h)
    assert len(dead) == len(dlq) == len(quarantine)
    assert dead.keys() == lake_rows.keys()  # every quarantined message is a dead letter, and only those
    for src, (m, h) in dead.items():
        row = lake_rows[src]
        assert h["vitalstream.reason"].decode() == row["reason"]
        key, value, headers = sent[src]  # the original key, value and headers, as produced
        assert (m.key, m.value) == (key, value) == (row["key"], row["value"])
        assert [x for x in m.headers if not x[0].startswith("vitalstream.")] == headers
    TRIED["broker"] += len(sent)


@pytest.fixture(scope="module", autouse=True)
def _report_fuzz_figures() -> Iterator[None]:
    yield
    print(f"\nfuzz messages tried: {dict(TRIED)}")
