"""Start-up: what a run imports and checks before it finds anything to do.

Importing the CLI and the flows loads none of PyTorch, Great Expectations, numba or pandas. A run that finds
nothing does not load PyTorch (the model loads when the first window is scored), Great Expectations (its
own flow) or numba (the record decoder's compiled loops, when the first fetch arrives); pandas it does, as
pyarrow imports it with the first array it builds. The model is still looked for up front, and a damaged
one stops the run as one ModelError line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.errors import ModelError
from pipeline.kafka_io import ensure_topics
from pipeline.kafka_settings import KafkaSettings
from runtime.wiring import preflight
from sim.broker import EmbeddedBroker

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "great_expectations", "numba", "pandas")


def _python(code: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def test_importing_the_scoring_flow_and_the_cli_loads_no_heavy_library() -> None:
    code = "import sys, json\nimport cli.main, flows.scoring\nprint(json.dumps([m for m in %r if m in sys.modules]))"
    assert json.loads(_python(code % (HEAVY,))) == []


def test_a_run_that_finds_nothing_imports_neither_torch_nor_numba(
    session_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    prefix = f"w{uuid.uuid4().hex[:8]}."
    ensure_topics(KafkaSettings(session_broker.bootstrap, topic_prefix=prefix, partitions=1))
    code = (
        "import sys, json\n"
        "from pipeline.config import Settings\n"
        "from runtime.wiring import run_scoring\n"
        "from pathlib import Path\n"
        "s = Settings(topic_prefix=sys.argv[2], partitions=1, lake=Path(sys.argv[3]), group='g' + sys.argv[2])\n"
        "summary = run_scoring(s, sys.argv[1])\n"
        f"print(json.dumps([summary.run.consumed, [m for m in {HEAVY[:3]!r} if m in sys.modules]]))\n"
    )
    consumed, heavy = json.loads(_python(code, session_broker.bootstrap, prefix, str(tmp_path / "lake")))
    assert consumed == 0
    assert heavy == []


def test_a_missing_model_is_found_at_preflight(tmp_path: Path) -> None:
    settings = Settings(model_path=tmp_path / "nope.pt", lake=tmp_path / "lake")
    with pytest.raises(ModelError, match=r"nope\.pt not found"):
        preflight(settings, "127.0.0.1:1")


def test_a_damaged_model_stops_the_run_as_a_model_error_when_it_is_first_needed(tmp_path: Path) -> None:
    from runtime.wiring import lazy_scorer

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    scorer = lazy_scorer(Settings(model_path=bad))  # nothing loaded yet
    with pytest.raises(ModelError, match="not a valid VitalStream checkpoint"):
        _ = scorer.length


def test_a_prefetched_model_is_built_in_the_background_and_its_failure_raised_at_first_use(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    from runtime.wiring import LazyScorer, build_scorer, lazy_scorer

    good = lazy_scorer(Settings(model_path=tiny_checkpoint), prefetch=True)
    assert isinstance(good, LazyScorer)
    deadline = time.monotonic() + 60
    while good._scorer is None and time.monotonic() < deadline:  # built without anyone asking
        time.sleep(0.05)
    assert good.length == build_scorer(Settings(model_path=tiny_checkpoint)).length
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    scorer = lazy_scorer(Settings(model_path=bad), prefetch=True)
    with pytest.raises(ModelError, match="not a valid VitalStream checkpoint"):
        _ = scorer.length
