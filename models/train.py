"""Training the risk LSTM on simulated patients: a visible loop, nanoGPT style.

    python -m models.train [--patients 400] [--hours 12] [--epochs 25] [--seed 0] [--out PATH]

Simulate -> windows (the pipeline's own `window_features`) -> sequences of the last L windows -> labels
from ground-truth events -> split by patient -> AdamW with clipping and early stopping -> per-head
temperature calibration on validation -> test metrics beside the clinical rules -> checkpoint + model card.
"""

from __future__ import annotations

import argparse
import hashlib
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

from models.labels import window_labels
from models.lstm import DEFAULT_CHECKPOINT, HEADS, Checkpoint, LSTMConfig, RiskLSTM
from pipeline.features import window_features
from pipeline.score import MODEL_FEATURES, feature_matrix, model_inputs, sequences
from pipeline.simulate import SimulationConfig, simulate


@dataclass
class TrainConfig:
    patients: int = 400
    hours: float = 12.0
    seed: int = 0
    epochs: int = 25
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    patience: int = 4
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    window_count: int = 12
    horizon_minutes: int = 60
    window_ms: int = 300_000
    hidden: int = 64
    layers: int = 2


@dataclass
class Split:
    x: np.ndarray  # [N, L, F]
    y: np.ndarray  # [N, heads]
    last: pa.Table  # the scored windows (for baselines)


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
    splits = {}
    for name, ids in groups.items():
        mask = np.asarray(pc.is_in(windows.column("patient_id"), pa.array(ids)).to_numpy(zero_copy_only=False))
        rows = windows.filter(pa.array(mask))
        ctx = model_inputs(rows)
        x, _ = sequences(ctx, feature_matrix(ctx, center, scale), rows, cfg.window_ms, cfg.window_count)
        keep = ~ongoing[mask]
        splits[name] = Split(x[keep], labels[mask][keep], rows.filter(pa.array(keep)))
    data = {
        "simulated_patients": cfg.patients,
        "hours_per_patient": cfg.hours,
        "seed": cfg.seed,
        "windows": {k: len(v.y) for k, v in splits.items()},
        "positives": {k: {h: int(v.y[:, i].sum()) for i, h in enumerate(HEADS)} for k, v in splits.items()},
        "events": len(sim.events),
    }
    return splits, center, scale, data


def train(cfg: TrainConfig, log: Any = print) -> tuple[Checkpoint, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    t0 = time.perf_counter()
    splits, center, scale, data = build_data(cfg)
    log(
        f"data: {data['windows']} windows, positives (train) {data['positives']['train']} "
        f"[{time.perf_counter() - t0:.1f} s]"
    )
    mcfg = LSTMConfig(
        n_features=len(MODEL_FEATURES),
        hidden=cfg.hidden,
        layers=cfg.layers,
        window_count=cfg.window_count,
        horizon_minutes=cfg.horizon_minutes,
    )
    model = RiskLSTM(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tr, va = splits["train"], splits["val"]
    pos = tr.y.mean(axis=0).clip(1e-3, 0.5)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(np.sqrt((1 - pos) / pos), dtype=torch.float32))
    x_tr, y_tr = torch.from_numpy(tr.x), torch.from_numpy(tr.y)
    x_va, y_va = torch.from_numpy(va.x), torch.from_numpy(va.y)
    best, best_state, bad_epochs, history = float("inf"), None, 0, []
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x_tr))
        total = 0.0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = loss_fn(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val = float(loss_fn(model(x_va), y_va))
        history.append({"epoch": epoch + 1, "train_loss": total / len(perm), "val_loss": val})
        log(f"epoch {epoch + 1:2d}  train {total / len(perm):.4f}  val {val:.4f}")
        if val < best - 1e-4:
            best, best_state, bad_epochs = val, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        val_logits = model(x_va).numpy()
        test_logits = model(torch.from_numpy(splits["test"].x)).numpy()
    temperature = [fit_temperature(val_logits[:, i], va.y[:, i]) for i in range(len(HEADS))]
    p_test = 1 / (1 + np.exp(-test_logits / np.asarray(temperature)))
    metrics = evaluate(p_test, splits["test"])
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in best_state.values())).hexdigest()[:8]
    ckpt = Checkpoint(
        config=mcfg,
        state_dict=best_state,
        feature_names=list(MODEL_FEATURES),
        center=center.tolist(),
        scale=scale.tolist(),
        temperature=temperature,
        version=f"lstm-{datetime.now(UTC):%Y%m%d}-{digest}",
        metrics=metrics,
        training={
            "config": asdict(cfg),
            "data": data,
            "history": history,
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )
    return ckpt, metrics


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The scalar T minimising validation log-loss of sigmoid(logit / T) (grid search; robust and cheap)."""
    if y.sum() == 0 or y.sum() == len(y):
        return 1.0
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 121))
    losses = []
    for t in grid:
        p = np.clip(1 / (1 + np.exp(-logits / t)), 1e-7, 1 - 1e-7)
        losses.append(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return float(grid[int(np.argmin(losses))])


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = y == 1, y == 0
    if not pos.any() or not neg.any():
        return float("nan")
    ranks = _rank(s)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * neg.sum()))


def auprc(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision: precision summed at each positive, in descending score order."""
    if not (y == 1).any():
        return float("nan")
    order = np.argsort(-s, kind="stable")
    hits = y[order] == 1
    precision = np.cumsum(hits) / np.arange(1, len(y) + 1)
    return float(precision[hits].mean())


def _rank(s: np.ndarray) -> np.ndarray:
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    _uniq, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]  # ties get their average rank


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(total)


def clinical_score(windows: pa.Table) -> np.ndarray:
    """Partial NEWS2 from the last window's heart and respiration rates, plus CGM consensus thresholds."""
    hr = _col(windows, "heart_rate_bpm_last")
    rr = _col(windows, "respiration_rate_per_min_last")
    g = _col(windows, "glucose_mg_dl_last")
    rr_pts = np.select([rr <= 8, rr <= 11, rr <= 20, rr <= 24, rr >= 25], [3, 1, 0, 2, 3], 0)
    hr_pts = np.select([hr <= 40, hr <= 50, hr <= 90, hr <= 110, hr <= 130, hr >= 131], [3, 1, 0, 1, 2, 3], 0)
    g_pts = np.where(g < 54, 6, np.where((g < 70) | (g > 250), 3, 0))
    return (
        np.nan_to_num(rr_pts) * ~np.isnan(rr)
        + np.nan_to_num(hr_pts) * ~np.isnan(hr)
        + np.nan_to_num(g_pts) * ~np.isnan(g)
    ).astype(np.float64)


def _col(t: pa.Table, name: str) -> np.ndarray:
    return np.asarray(t.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def evaluate(p: np.ndarray, test: Split) -> dict[str, Any]:
    base = clinical_score(test.last)
    out: dict[str, Any] = {"test_windows": len(test.y)}
    for i, head in enumerate(HEADS):
        y = test.y[:, i]
        out[head] = {
            "positives": int(y.sum()),
            "auroc": auroc(y, p[:, i]),
            "auprc": auprc(y, p[:, i]),
            "baseline_auroc": auroc(y, base),
            "baseline_auprc": auprc(y, base),
        }
    out["any"]["ece"] = ece(test.y[:, 0], p[:, 0])
    out["baseline"] = "partial NEWS2 (HR, RR of the last window) + CGM consensus thresholds on the last glucose"
    return out


def model_card(ckpt: Checkpoint, path: Path) -> None:
    m, t = ckpt.metrics, ckpt.training
    lines = [
        f"# Risk LSTM `{ckpt.version}`",
        "",
        f"Trained by `python -m models.train` in {t['seconds']} s on {t['data']['simulated_patients']} simulated "
        f"patients x {t['data']['hours_per_patient']} h (seed {t['data']['seed']}), split by patient.",
        f"Horizon {ckpt.config.horizon_minutes} min; context {ckpt.config.window_count} windows of 5 min; "
        f"{ckpt.config.layers} layers x {ckpt.config.hidden} hidden.",
        "",
        f"Test windows: {m['test_windows']} (windows during an ongoing event excluded). Baseline: {m['baseline']}.",
        "",
        "| head | positives | AUROC | baseline AUROC | AUPRC | baseline AUPRC |",
        "|---|---|---|---|---|---|",
    ]
    for h in HEADS:
        r = m[h]
        lines.append(
            f"| {h} | {r['positives']} | {r['auroc']:.3f} | {r['baseline_auroc']:.3f} | "
            f"{r['auprc']:.3f} | {r['baseline_auprc']:.3f} |"
        )
    lines += [
        "",
        f"Expected calibration error (any, 10 bins, after temperature scaling): {m['any']['ece']:.3f}.",
        f"Temperatures per head: {', '.join(f'{x:.2f}' for x in ckpt.temperature)}.",
        "",
        "Model quality, baselines at a fixed alert budget, lead times and bootstrap intervals: issue #3.",
        "",
    ]
    path.write_text("\n".join(lines))


def loss_curve(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], label="train")
    ax.plot([h["epoch"] for h in history], [h["val_loss"] for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted BCE")
    ax.set_title("Risk LSTM training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vitalstream train", description="Train the risk LSTM on simulated patients.")
    defaults = TrainConfig()
    ap.add_argument("--patients", type=int, default=defaults.patients)
    ap.add_argument("--hours", type=float, default=defaults.hours)
    ap.add_argument("--epochs", type=int, default=defaults.epochs)
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT)
    args = ap.parse_args(argv)
    from flows.training import training_flow

    result = training_flow(patients=args.patients, hours=args.hours, epochs=args.epochs, seed=args.seed, out=args.out)
    print(json.dumps({h: result["metrics"][h] for h in HEADS}, indent=1))
    print(f"saved {args.out} ({args.out.stat().st_size / 1024:.0f} KiB), version {result['version']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
