"""Training the risk LSTM on simulated patients: config, data, loss and a visible loop, nanoGPT style.

    vitalstream train [--patients 600] [--hours 12] [--epochs 30] [--seed 0] [--out PATH] [--force]

Simulate -> windows (the pipeline's own `window_features`) -> sequences of the last L windows -> labels
from ground-truth events -> split by patient -> AdamW with clipping and early stopping on validation loss
(risk BCE + forecast Gaussian NLL) -> isotonic calibration and forecast intervals on validation -> test
metrics beside the clinical baselines (models/evaluate.py). The flow (flows/training.py) writes the
checkpoint, promoted over the shipped one only when it beats it on the same test windows, with its model
card (models/card.py) and pictures (models/figures.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from models import evaluate as ev
from models.evaluate import Split
from models.labels import window_labels
from models.lstm import Checkpoint, LSTMConfig, RiskLSTM
from models.scorer import feature_matrix, model_inputs, sequences
from pipeline.features import window_features
from pipeline.model_contract import CONDITIONS, HEADS, MODEL_FEATURES
from sim.simulate import PROFILES, SimulationConfig, simulate

# --- config -------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    patients: int = 600
    hours: float = 12.0
    seed: int = 0
    epochs: int = 30
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    patience: int = 4
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    window_count: int = 12
    horizon_minutes: int = 60
    window_ms: int = 300_000
    hidden: int = 32
    layers: int = 2
    forecast_weight: float = 0.2  # weight of the forecast NLL beside the risk BCE
    any_source: str = "auto"  # "head", "conditions" or "auto" (the better on validation AUROC)
    bootstrap: int = 200  # patient resamples for confidence intervals
    alert_budget_per_day: float = 1.0
    forecast_coverage: float = 0.99


# --- data ---------------------------------------------------------------------------------------------------


def build_data(cfg: TrainConfig) -> tuple[dict[str, Split], np.ndarray, np.ndarray, dict[str, Any]]:
    sim = simulate(SimulationConfig(patients=cfg.patients, hours=cfg.hours, seed=cfg.seed, start_ms=1_795_305_600_000))
    windows = window_features(sim.readings, cfg.window_ms)
    labels, ongoing = window_labels(windows, sim.events, cfg.horizon_minutes)
    patients = np.asarray(sim.patients.column("patient_id").to_pylist())
    rng = np.random.default_rng(cfg.seed)
    rng.shuffle(patients)
    n_test = int(len(patients) * cfg.test_fraction)
    n_val = int(len(patients) * cfg.val_fraction)
    groups = {"test": patients[:n_test], "val": patients[n_test : n_test + n_val], "train": patients[n_test + n_val :]}
    train_rows = windows.filter(pc.is_in(windows.column("patient_id"), pa.array(groups["train"])))
    raw = feature_matrix(train_rows, np.zeros(len(MODEL_FEATURES)), np.ones(len(MODEL_FEATURES)))
    center = np.median(raw, axis=0).astype(np.float64)
    q75, q25 = np.percentile(raw, [75, 25], axis=0)
    scale = np.where(q75 - q25 > 1e-6, q75 - q25, np.maximum(np.abs(raw).max(axis=0), 1.0)).astype(np.float64)
    # Presence flags stay 0/1, so that a gap in the context (all zeros) reads as "absent", not as typical.
    for i, name in enumerate(MODEL_FEATURES):
        if name.endswith("_present"):
            center[i], scale[i] = 0.0, 1.0
    splits = {}
    for name, ids in groups.items():
        mask = np.asarray(pc.is_in(windows.column("patient_id"), pa.array(ids)).to_numpy(zero_copy_only=False))
        rows = windows.filter(pa.array(mask))
        ctx = model_inputs(rows)
        x, _ = sequences(ctx, feature_matrix(ctx, center, scale), rows, cfg.window_ms, cfg.window_count)
        keep = ~ongoing[mask]
        events = sim.events.filter(pc.is_in(sim.events.column("patient_id"), pa.array(ids)))
        if sim.episodes is not None:
            events = events.append_column("precursor_minutes", pa.array(ev.precursor_leads(events, sim.episodes)))
        splits[name] = Split(
            x[keep], labels[mask][keep], rows.filter(pa.array(keep)), ctx, events, len(ids) * cfg.hours / 24
        )
    conditions = sim.events.column("condition").to_pylist()
    profiles = sim.patients.column("profile").to_pylist()
    data = {
        "source": "sim.simulate (synthetic patients; events by the published thresholds)",
        "simulated_patients": cfg.patients,
        "hours_per_patient": cfg.hours,
        "seed": cfg.seed,
        "profiles": {p: profiles.count(p) for p in PROFILES},
        "events": {c: conditions.count(c) for c in CONDITIONS},
        "patients": {k: len(v) for k, v in groups.items()},
        "windows": {k: len(v.y) for k, v in splits.items()},
        "windows_during_events_excluded": int(ongoing.sum()),
        "positives": {k: {h: int(v.y[:, i].sum()) for i, h in enumerate(HEADS)} for k, v in splits.items()},
    }
    return splits, center, scale, data


# --- the loss and the training loop -------------------------------------------------------------------------


def _forecast_loss(model: RiskLSTM, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gaussian NLL of each step's forecast of the next window's vital means, where those are present."""
    pairs = model.cfg.forecast_pairs
    k = len(pairs)
    fc = model.forecast(out[:, :-1])
    target = x[:, 1:, [f for f, _ in pairs]]
    present = x[:, 1:, [p for _, p in pairs]]
    mu, logvar = fc[..., :k], fc[..., k:].clamp(-10, 10)
    nll = 0.5 * (logvar + (target - mu) ** 2 / logvar.exp())
    return (nll * present).sum() / present.sum().clamp(min=1.0)


def train(cfg: TrainConfig, log: Any = print) -> tuple[Checkpoint, dict[str, Split]]:
    """Fit, calibrate and evaluate; the checkpoint's metrics are those of its test patients."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    t0 = time.perf_counter()
    splits, center, scale, data = build_data(cfg)
    log(
        f"data: {data['windows']} windows, positives (train) {data['positives']['train']} "
        f"[{time.perf_counter() - t0:.1f} s]"
    )
    # model, optimiser and the loss
    mcfg = LSTMConfig(
        hidden=cfg.hidden, layers=cfg.layers, window_count=cfg.window_count, horizon_minutes=cfg.horizon_minutes
    )
    model = RiskLSTM(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tr, va = splits["train"], splits["val"]
    pos = tr.y.mean(axis=0).clip(1e-3, 0.5)
    # sqrt of the class ratio: rare heads get gradient without flooding the loss; calibration undoes it
    bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(np.sqrt((1 - pos) / pos), dtype=torch.float32))
    x_tr, y_tr = torch.from_numpy(tr.x), torch.from_numpy(tr.y)
    x_va, y_va = torch.from_numpy(va.x), torch.from_numpy(va.y)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = model.hidden_states(x)
        return bce(model.head(out[:, -1]), y) + cfg.forecast_weight * _forecast_loss(model, out, x)

    # the loop: AdamW steps with gradient clipping, the validation loss after each epoch; the best state is
    # kept and training stops after `patience` epochs without improvement
    best, best_state, bad_epochs, history = float("inf"), None, 0, []
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x_tr))
        total = 0.0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = loss_of(x_tr[idx], y_tr[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val = float(loss_of(x_va, y_va))
        history.append({"epoch": epoch + 1, "train_loss": total / len(perm), "val_loss": val})
        log(f"epoch {epoch + 1:2d}  train {total / len(perm):.4f}  val {val:.4f}")
        if val < best - 1e-4:
            best, best_state, bad_epochs = val, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    # the checkpoint: the best state, calibrated on validation and evaluated on the test patients
    assert best_state is not None
    ckpt = Checkpoint(
        config=mcfg,
        state_dict=best_state,
        feature_names=list(MODEL_FEATURES),
        center=[float(v) for v in center],
        scale=[float(v) for v in scale],
        temperature=[1.0] * len(HEADS),
        forecast_coverage=cfg.forecast_coverage,
    )
    calibrate(ckpt, va, cfg.any_source)
    ckpt.metrics = ev.evaluate(ckpt, splits, cfg)
    ckpt.digest = ckpt.compute_digest()
    ckpt.version = f"lstm-{datetime.now(UTC):%Y%m%d}-{ckpt.digest[:8]}"
    ckpt.training = {
        "config": asdict(cfg),
        "data": data,
        "history": history,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return ckpt, splits


# --- calibration --------------------------------------------------------------------------------------------


def calibrate(ckpt: Checkpoint, val: Split, any_source: str = "auto") -> None:
    """Fit on validation patients: isotonic maps per condition; the "any" risk from its own head or from
    the calibrated condition heads (1 - prod(1 - p)), whichever ranks validation windows better (or as
    asked), then its isotonic map; the forecast interval width for the wanted coverage."""
    logits, forecast = ev.network_outputs(ckpt, val.x)
    raw = 1 / (1 + np.exp(-logits.astype(np.float64)))
    any_i = HEADS.index("any")
    ckpt.isotonic = [{} for _ in HEADS]
    for c in CONDITIONS:
        i = HEADS.index(c)
        ckpt.isotonic[i] = ev.fit_isotonic(raw[:, i], val.y[:, i])
    candidates = {}
    for source in ("head", "conditions"):
        ckpt.any_source = source
        candidates[source] = ev.auroc(val.y[:, any_i], ckpt.probabilities(logits)[:, any_i])
    ckpt.any_source = max(candidates, key=lambda s: candidates[s]) if any_source == "auto" else any_source
    ckpt.isotonic[any_i] = ev.fit_isotonic(ckpt.probabilities(logits)[:, any_i], val.y[:, any_i])
    ckpt.metrics["validation_any_auroc"] = candidates
    # Split-conformal width: the z that covers `forecast_coverage` of validation windows' standardised errors.
    k = len(ckpt.config.forecast_pairs)
    z = []
    for j, (f, p) in enumerate(ckpt.config.forecast_pairs):
        ok = (val.x[:, -1, p] > 0) & (val.x[:, :-1, p].sum(axis=1) > 0)
        mu, logvar = forecast[ok, 0, j], np.clip(forecast[ok, 0, k + j], -20, 20)
        err = np.abs(val.x[ok, -1, f] - mu) / np.exp(0.5 * logvar)
        z.append(float(np.quantile(err, ckpt.forecast_coverage)) if ok.any() else 2.576)
    ckpt.forecast_z = z


# --- promotion ----------------------------------------------------------------------------------------------


def should_promote(new: dict[str, float], shipped: dict[str, float] | None) -> tuple[bool, str]:
    """A new checkpoint replaces the shipped one only if it ranks the same test windows better: a higher
    AUROC for the overall risk (ties keep the shipped one, which is known to work downstream)."""
    if shipped is None:
        return True, "no usable shipped checkpoint to compare with"
    if new["auroc"] > shipped["auroc"]:
        return True, f"AUROC {new['auroc']:.3f} > shipped {shipped['auroc']:.3f} on the same test windows"
    return False, f"AUROC {new['auroc']:.3f} <= shipped {shipped['auroc']:.3f} on the same test windows"


def shipped_figures(path: Path, ckpt: Checkpoint, test: Split) -> tuple[dict[str, float] | None, str]:
    """The shipped checkpoint's overall AUROC/AUPRC on the new model's test windows, or None (and why)
    when it cannot be compared: missing, unreadable, tampered, or predicting another horizon."""
    from models.lstm import load_checkpoint

    try:
        old = load_checkpoint(path)
    except FileNotFoundError:
        return None, "none"
    except ValueError as exc:
        return None, f"unusable: {str(exc).removeprefix(f'{path}: ')}"  # the card is read elsewhere: no local path
    if old.config.horizon_minutes != ckpt.config.horizon_minutes or old.feature_names != ckpt.feature_names:
        return None, f"{old.version}: another horizon or feature set, not comparable"
    logits, _ = ev.network_outputs(old, ev.split_inputs(old, test))
    p = old.probabilities(logits)[:, old.config.heads.index("any")]
    y = test.y[:, HEADS.index("any")]
    return {"auroc": ev.auroc(y, p), "auprc": ev.auprc(y, p)}, old.version


def print_result(result: dict[str, Any]) -> None:
    """What `vitalstream train` prints: the targets, the promotion verdict and where the checkpoint went."""
    print(json.dumps(result["metrics"]["targets"], indent=1))
    print(f"{'promoted' if result['promoted'] else 'NOT promoted'}: {result['reason']}")
    print(f"saved {result['path']} ({Path(result['path']).stat().st_size / 1024:.0f} KiB), version {result['version']}")
