"""Data Docs from kept validation results: Great Expectations validates two runs' samples (one with
unexpected rows), and the site shows each suite, each run and the failure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import T0, LakeEngine, raw_batch

from cli.main import main
from ops.datadocs import build_data_docs, kept_results, suite_names
from ops.quality import pending_samples, validate_pending


def heart_rate_run(lake: Path, ckpt: Path, run_id: str, bad_bpm: float | None, start_min: int) -> dict:
    engine = LakeEngine(lake, ckpt, "dq")
    ts = [T0 + (start_min * 60 + s) * 1000 for s in range(0, 600, 10)]
    values: list[bytes | None] = [
        json.dumps({"patient_id": "P1", "device_id": "hr-1", "ts": t, "heart_rate_bpm": 70.0}).encode() for t in ts
    ]
    if bad_bpm is not None:
        values[3] = json.dumps(
            {"patient_id": "P1", "device_id": "hr-1", "ts": ts[3], "heart_rate_bpm": bad_bpm}
        ).encode()
    engine.write(engine.process([raw_batch("heart_rate", values, [b"P1"] * len(values), ts)]))
    engine.write_quality_sample(run_id)
    validated = validate_pending(lake)  # Great Expectations in this process, results kept beside the samples
    return {r["suite"]: r for r in validated}


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    lake = tmp_path_factory.mktemp("dq") / "lake"
    clean = heart_rate_run(lake, tiny_checkpoint, "20261122T000000Z-clean1", None, 0)
    bad = heart_rate_run(lake, tiny_checkpoint, "20261122T001000Z-faulty", 900.0, 10)
    assert clean["heart_rate_readings"]["success"] and not bad["heart_rate_readings"]["success"]
    return lake


def test_site_shows_every_suite_each_run_and_the_failure(lake: Path) -> None:
    site = build_data_docs(lake)

    assert site.index == lake / "_quality" / "data_docs" / "index.html" and site.index.exists()
    assert site.suites == len(suite_names()) == 5
    assert len(kept_results(lake, "heart_rate_readings")) == 2 and site.failed == 1
    assert site.validations == sum(len(kept_results(lake, s)) for s in suite_names())
    docs = site.index.parent
    for suite in suite_names():
        assert (docs / "expectations" / f"{suite}.html").exists()  # each suite, from schemas/expectations
    pages = {p.relative_to(docs / "validations").parts[:2]: p for p in (docs / "validations").rglob("*.html")}
    assert {run for suite, run in pages if suite == "heart_rate_readings"} == {
        "20261122T000000Z-clean1",
        "20261122T001000Z-faulty",
    }
    failing = pages["heart_rate_readings", "20261122T001000Z-faulty"].read_text()
    assert "heart_rate_bpm" in failing and "900" in failing  # the unexpected value is on the run's page
    index = site.index.read_text()
    assert "20261122T001000Z-faulty" in index and "Failed" in index
    # The page that works without internet: every suite, every run, links that resolve, the failure named.
    offline = (docs / "offline.html").read_text()
    links = re.findall(r'href="([^"]+)"', offline)
    assert links and all((docs / link).exists() for link in links)
    assert all(f"expectations/{suite}.html" in links for suite in suite_names())
    assert offline.count("<b>failed</b>") == 1 and "expect_column_values_to_be_between:heart_rate_bpm (1)" in offline


def test_rebuild_follows_the_kept_results_and_the_cli(lake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in kept_results(lake, "heart_rate_readings")[:1]:  # an operator prunes the oldest run
        path.unlink()
        path.with_suffix(".parquet").unlink()  # its sample too, or the next validation would redo it
    assert main(["quality", "--lake", str(lake)]) == 0
    assert "index.html" in capsys.readouterr().out
    pages = list((lake / "_quality" / "data_docs" / "validations" / "heart_rate_readings").rglob("*.html"))
    assert [p.relative_to(pages[0].parents[2]).parts[0] for p in pages] == ["20261122T001000Z-faulty"]


def test_run_samples_are_validated_once_each(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """A long run (--follow) writes a sample every few minutes: the run's totals add up over its samples,
    every sample is validated once, and GE fails exactly the sample that holds the unexpected row."""
    lake = tmp_path / "lake"
    engine = LakeEngine(lake, tiny_checkpoint, "dq2")

    def batch(start_min: int, bad: bool) -> None:
        ts = [T0 + (start_min * 60 + s) * 1000 for s in range(0, 600, 10)]
        bpm = [900.0 if bad and i == 3 else 70.0 for i in range(len(ts))]
        values: list[bytes | None] = [
            json.dumps({"patient_id": "P1", "device_id": "hr-1", "ts": t, "heart_rate_bpm": b}).encode()
            for t, b in zip(ts, bpm, strict=True)
        ]
        engine.write(engine.process([raw_batch("heart_rate", values, [b"P1"] * len(values), ts)]))

    batch(0, bad=True)
    first = engine.write_quality_sample("20261122T000000Z-first")
    batch(10, bad=False)
    totals = engine.write_quality_sample("20261122T001000Z-second")

    hr = totals["heart_rate_readings"]
    assert first["heart_rate_readings"]["checked"] == 60 and first["heart_rate_readings"]["failed"] == 1
    assert (hr["checked"], hr["failed"], hr["sampled"]) == (120, 1, 120)
    samples = {p for suite, p in pending_samples(lake) if suite == "heart_rate_readings"}
    assert len(samples) == 2 and Path(hr["sample"]) in samples

    validated = [r for r in validate_pending(lake) if r["suite"] == "heart_rate_readings"]
    verdicts = {r["sample"]: r["success"] for r in validated}
    assert verdicts == {Path(first["heart_rate_readings"]["sample"]).stem: False, Path(hr["sample"]).stem: True}
    assert validate_pending(lake) == [] and pending_samples(lake) == []


def test_old_samples_and_results_are_pruned(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from ops.quality import prune

    suite = tmp_path / "lake" / "_quality" / "windows"
    suite.mkdir(parents=True)
    names = ["20261101T000000Z-old111", "20261120T000000Z-new222"]
    for name in names:
        for ext in (".parquet", ".json"):
            (suite / f"{name}{ext}").write_text("x")
    (suite / "notes.json").write_text("not a sample: left alone")
    now = datetime(2026, 11, 25, tzinfo=UTC)

    assert prune(tmp_path / "lake", 0, now) == 0  # 0 keeps everything
    assert prune(tmp_path / "lake", 14, now) == 2
    assert sorted(p.name for p in suite.iterdir()) == [
        "20261120T000000Z-new222.json",
        "20261120T000000Z-new222.parquet",
        "notes.json",
    ]


def test_a_damaged_sample_is_set_aside_and_reported_and_the_rest_are_validated(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    lake = tmp_path / "lake"
    heart_rate_run(lake, tiny_checkpoint, "20261122T000000Z-good01", None, 0)  # validated: nothing pending
    good = lake / "_quality" / "heart_rate_readings" / "20261122T000000Z-good01.parquet"
    good.with_suffix(".json").unlink()  # pending again
    damaged = lake / "_quality" / "heart_rate_readings" / "20261122T000100Z-bad002.parquet"
    damaged.write_bytes(b"PAR1 truncated by a full disk")

    results = {r["sample"]: r for r in validate_pending(lake)}

    assert results["20261122T000000Z-good01"]["success"] and "error" not in results["20261122T000000Z-good01"]
    bad = results["20261122T000100Z-bad002"]
    assert not bad["success"] and "unreadable sample" in bad["error"]
    assert not damaged.exists() and damaged.with_suffix(".unreadable").exists()  # kept, to look at
    assert validate_pending(lake) == []  # not retried on every run
