"""The edge engine: the network exported to ONNX scores like PyTorch, and a file from another checkpoint
is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import T0

from models.export import export_onnx
from models.lstm import load_checkpoint
from models.scorer import HISTORY_SCHEMA, Scorer
from pipeline.features import window_features
from sim.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def windows():  # type: ignore[no-untyped-def]
    sim = simulate(SimulationConfig(patients=20, hours=1.5, seed=11, start_ms=T0))
    return window_features(sim.readings, 300_000)


def test_torch_and_onnx_engines_give_the_same_scores(tiny_checkpoint: Path, tmp_path: Path, windows) -> None:  # type: ignore[no-untyped-def]
    ckpt = load_checkpoint(tiny_checkpoint)
    onnx_file = tmp_path / "m.onnx"
    export_onnx(ckpt, onnx_file)
    empty = HISTORY_SCHEMA.empty_table()
    a, _ = Scorer(ckpt, engine="torch").score(empty, windows)
    b, _ = Scorer(ckpt, engine="onnx", onnx_path=onnx_file).score(empty, windows)
    c, _ = Scorer(ckpt, engine="onnx", batch_size=7).score(empty, windows)  # exported in memory
    assert len(a) == len(windows) > 100
    for column in a.column_names:
        if column == "scored_at":
            continue
        left = a.column(column).to_pylist()
        for other in (b, c):
            right = other.column(column).to_pylist()
            if a.schema.field(column).type == "double":  # None (no sensor) -> nan on both sides
                np.testing.assert_allclose(np.array(left, float), np.array(right, float), rtol=1e-4, atol=1e-5)
            else:
                assert left == right, column


def test_the_shipped_model_agrees_across_engines(windows) -> None:  # type: ignore[no-untyped-def]
    ckpt = load_checkpoint()
    x = np.random.default_rng(0).normal(size=(300, ckpt.config.window_count, ckpt.config.n_features)).astype(np.float32)
    x[:, :, [p for _, p in ckpt.config.forecast_pairs]] = 1.0
    torch_logits, torch_fc = Scorer(ckpt).network(x)
    onnx_logits, onnx_fc = Scorer(ckpt, engine="onnx").network(x)
    np.testing.assert_allclose(torch_logits, onnx_logits, atol=1e-4)
    np.testing.assert_allclose(torch_fc, onnx_fc, atol=1e-4)
    np.testing.assert_allclose(ckpt.probabilities(torch_logits), ckpt.probabilities(onnx_logits), atol=1e-4)


def test_an_onnx_file_from_another_checkpoint_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    different = load_checkpoint(tiny_checkpoint)
    different.state_dict = {k: v + 0.01 for k, v in different.state_dict.items()}
    different.save(tmp_path / "different.pt")
    other = tmp_path / "other.onnx"
    export_onnx(different, other)
    with pytest.raises(ValueError, match="another checkpoint"):
        Scorer(load_checkpoint(tiny_checkpoint), engine="onnx", onnx_path=other)
    with pytest.raises(ValueError, match="unknown scoring engine"):
        Scorer(load_checkpoint(tiny_checkpoint), engine="tflite")


def test_export_onnx_command_writes_a_file_the_onnx_engine_uses(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from cli.main import main
    from pipeline.config import Settings, load_settings
    from pipeline.errors import ConfigError

    out = tmp_path / "edge.onnx"
    assert main(["export-onnx", "--model", str(tiny_checkpoint), "--out", str(out)]) == 0
    from runtime.wiring import build_scorer

    scorer = build_scorer(Settings(model_path=tiny_checkpoint, scoring_engine="onnx", onnx_path=out))
    assert scorer.session is not None and scorer.engine == "onnx"
    assert main(["export-onnx", "--model", str(tmp_path / "missing.pt")]) == 5  # ModelError's exit code
    with pytest.raises(ConfigError, match="scoring_engine"):
        load_settings(env={"VITALSTREAM_SCORING_ENGINE": "tpu"})


def test_conditions_judged_from_their_own_stream_export_to_onnx_alike(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`own_stream_heads` adds a second pass inside the network: the ONNX graph carries it, same logits."""
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt.config.own_stream_heads = ("hypoglycaemia", "hyperglycaemia")  # no weights of its own: same state
    onnx_file = tmp_path / "own.onnx"
    export_onnx(ckpt, onnx_file)
    x = np.random.default_rng(1).normal(size=(50, ckpt.config.window_count, ckpt.config.n_features)).astype(np.float32)
    torch_logits, _ = Scorer(ckpt).network(x)
    onnx_logits, _ = Scorer(ckpt, engine="onnx", onnx_path=onnx_file).network(x)
    np.testing.assert_allclose(torch_logits, onnx_logits, atol=1e-4)
    plain_logits, _ = Scorer(load_checkpoint(tiny_checkpoint)).network(x)
    assert not np.allclose(torch_logits, plain_logits)  # the option changed what the network computes
