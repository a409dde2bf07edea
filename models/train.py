"""Training the risk LSTM on simulated patients: a visible loop, nanoGPT style.

    vitalstream train [--patients 600] [--hours 12] [--epochs 30] [--seed 0] [--out PATH] [--force]

Simulate -> windows (the pipeline's own `window_features`) -> sequences of the last L windows -> labels
from ground-truth events -> split by patient -> AdamW with clipping and early stopping on validation loss
(risk BCE + forecast Gaussian NLL) -> isotonic calibration and forecast intervals on validation -> test
metrics beside the clinical baselines (models/evaluate.py) -> checkpoint + model card, promoted over the
shipped checkpoint only when it beats it on the same test windows (flows/training.py).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
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
from models.labels import window_labels
from models.lstm import CONDITIONS, HEADS, MODEL_FEATURES, Checkpoint, LSTMConfig, RiskLSTM
from models.scorer import FORECAST_VITALS, feature_matrix, model_inputs, sequences
from pipeline.features import window_features
from sim.simulate import PROFILES, SimulationConfig, simulate

# The baselines of the model card, in its column order (models/evaluate.py defines them).
BASELINES: dict[str, str] = {
    "news2_partial": "partial NEWS2 (HR + RR)",
    "cgm": "CGM consensus level",
    "news2_cgm": "NEWS2 + CGM",
    "logistic": "logistic regression",
}


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


@dataclass
class Split:
    x: np.ndarray  # [N, L, F], normalised with the trained model's center and scale
    y: np.ndarray  # [N, heads]
    targets: pa.Table  # the scored windows (not during an ongoing event): baselines read them
    context: pa.Table  # model inputs of every window of these patients: any checkpoint's sequences
    events: pa.Table  # ground-truth events of these patients
    patient_days: float


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
    ckpt.metrics = evaluate(ckpt, splits, cfg)
    ckpt.digest = ckpt.compute_digest()
    ckpt.version = f"lstm-{datetime.now(UTC):%Y%m%d}-{ckpt.digest[:8]}"
    ckpt.training = {
        "config": asdict(cfg),
        "data": data,
        "history": history,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return ckpt, splits


def network_outputs(ckpt: Checkpoint, x: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    net = ckpt.model()
    logits, forecast = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            lo, fc = net(torch.from_numpy(x[i : i + batch]))
            logits.append(lo.numpy())
            forecast.append(fc.numpy())
    k2 = 2 * len(ckpt.config.forecast_pairs)
    if not logits:
        return np.zeros((0, len(ckpt.config.heads))), np.zeros((0, 2, k2))
    return np.concatenate(logits), np.concatenate(forecast)


def calibrate(ckpt: Checkpoint, val: Split, any_source: str = "auto") -> None:
    """Fit on validation patients: isotonic maps per condition; the "any" risk from its own head or from
    the calibrated condition heads (1 - prod(1 - p)), whichever ranks validation windows better (or as
    asked), then its isotonic map; the forecast interval width for the wanted coverage."""
    logits, forecast = network_outputs(ckpt, val.x)
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


def split_inputs(ckpt: Checkpoint, split: Split, window_ms: int = 300_000) -> np.ndarray:
    """The split's scored windows as sequences for `ckpt` (its own normalisation and context length)."""
    x, _ = sequences(
        split.context,
        feature_matrix(split.context, np.asarray(ckpt.center), np.asarray(ckpt.scale)),
        split.targets,
        window_ms,
        ckpt.config.window_count,
    )
    return x


def evaluate(ckpt: Checkpoint, splits: dict[str, Split], cfg: TrainConfig) -> dict[str, Any]:
    """The model card's figures, on the test patients, for the model and every baseline."""
    test, train_split = splits["test"], splits["train"]
    logits, forecast = network_outputs(ckpt, test.x)
    p = ckpt.probabilities(logits)
    raw = 1 / (1 + np.exp(-logits.astype(np.float64)))
    # the same overall risk without the isotonic maps, to show what calibration does
    cond = [HEADS.index(c) for c in CONDITIONS]
    raw_any = 1 - np.prod(1 - raw[:, cond], axis=1) if ckpt.any_source == "conditions" else raw[:, HEADS.index("any")]
    last = test.x[:, -1, :]
    scores: dict[str, np.ndarray] = {
        "news2_partial": ev.news2_partial(test.targets),
        "cgm": ev.cgm_level(test.targets),
        "news2_cgm": ev.clinical_score(test.targets),
    }
    patient = np.asarray(test.targets.column("patient_id").to_pylist())
    t_end = test.targets.column("window_end").cast(pa.int64()).to_numpy()
    heads: dict[str, Any] = {}
    for i, head in enumerate(HEADS):
        y = test.y[:, i]
        w = ev.fit_logistic(train_split.x[:, -1, :], train_split.y[:, i])
        per = {"model": p[:, i], **scores, "logistic": ev.predict_logistic(w, last)}
        row: dict[str, Any] = {"positives": int(y.sum())}
        for name, s in per.items():
            row[name] = _with_ci(y, s, patient, cfg.bootstrap, cfg.seed)
        best = max(BASELINES, key=lambda b: row[b]["auroc"] if not np.isnan(row[b]["auroc"]) else -1.0)
        row["best_baseline"] = best
        lo, hi = ev.bootstrap_ci(patient, _auroc_gain(y, per["model"], per[best]), cfg.bootstrap, cfg.seed)
        row["auroc_gain_ci"] = [lo, hi]  # paired: the same resampled patients for both scores
        heads[head] = row
        if head == "any":
            any_scores = per
    ev_patient = np.asarray(test.events.column("patient_id").to_pylist())
    ev_onset = test.events.column("onset").cast(pa.int64()).to_numpy()
    h_ms = cfg.horizon_minutes * ev.MINUTE_MS
    alerting = {
        name: ev.at_budget(
            s, patient, t_end, ev_patient, ev_onset, h_ms, test.patient_days, cfg.alert_budget_per_day
        ).as_dict()
        for name, s in any_scores.items()
    }
    red = ev.news2_red(test.targets) > 0
    alerting["news2_red"] = ev.alert_stats(
        patient, t_end, red, ev_patient, ev_onset, h_ms, test.patient_days, 1.0
    ).as_dict()
    for a in alerting.values():
        a["median_lead_ci"] = _median_lead_ci(a.pop("leads_minutes"), a.pop("lead_patients"), cfg.bootstrap, cfg.seed)
    y_any = test.y[:, HEADS.index("any")]
    metrics: dict[str, Any] = {
        "test_windows": len(test.y),
        "test_patients": len(np.unique(patient)),
        "test_patient_days": test.patient_days,
        "heads": heads,
        "alerts": alerting,
        "alert_budget_per_day": cfg.alert_budget_per_day,
        "calibration": {
            "ece": ev.ece(y_any, p[:, 0]),
            "ece_uncalibrated": ev.ece(y_any, raw_any),
            "bins": ev.calibration_bins(y_any, p[:, 0]),
            "bins_uncalibrated": ev.calibration_bins(y_any, raw_any),
        },
        "any_source": ckpt.any_source,
        "validation_any_auroc": ckpt.metrics.get("validation_any_auroc", {}),
        "forecast": forecast_metrics(ckpt, test.x, forecast),
        "roc": {name: _roc(y_any, s) for name, s in any_scores.items()},
    }
    if "precursor_minutes" in test.events.column_names:
        metrics["precursors"] = foreseeable(test, patient, t_end, h_ms, alerting["model"])
    metrics["targets"] = targets(metrics)
    return metrics


def foreseeable(
    test: Split, patient: np.ndarray, t_end: np.ndarray, h_ms: int, model: dict[str, Any]
) -> dict[str, Any]:
    """How much warning the simulated signal gives, over the events that the alert figures count (a scored
    window in the hour before onset): the share with no precursor, and the median lead an alert would have
    if it fired the moment the precursor began (capped at the horizon)."""
    onset = test.events.column("onset").cast(pa.int64()).to_numpy()
    who = np.asarray(test.events.column("patient_id").to_pylist())
    counted = np.array(
        [((patient == p) & (t_end < o) & (t_end >= o - h_ms)).any() for p, o in zip(who, onset, strict=True)],
        dtype=bool,  # a test set with no events must still index (an empty float array cannot)
    )
    uncapped = test.events.column("precursor_minutes").to_numpy()[counted]
    lead = np.minimum(uncapped, h_ms / ev.MINUTE_MS)
    present = uncapped[uncapped > 0]
    return {
        "precursor_minutes_quartiles_when_present": (
            [float(q) for q in np.percentile(present, [25, 50, 75])] if len(present) else []
        ),
        "events": int(counted.sum()),
        "no_precursor": int((lead == 0).sum()),
        "median_precursor_minutes": float(np.median(lead)) if len(lead) else float("nan"),
        "median_precursor_minutes_when_present": float(np.median(lead[lead > 0])) if (lead > 0).any() else float("nan"),
        "share_with_precursor_over_20_minutes": float((lead >= 20).mean()) if len(lead) else float("nan"),
        "model_detected": model["detected"],
    }


def _median_lead_ci(leads: list[float], patients: list[str], reps: int, seed: int) -> list[float]:
    """Interval of the median lead time over resamples of the patients whose events were detected (the
    threshold stays as chosen on the whole test set)."""
    if not leads:
        return [float("nan"), float("nan")]
    lead = np.asarray(leads)
    return list(ev.bootstrap_ci(np.asarray(patients), lambda r: float(np.median(lead[r])), reps, seed))


def _auroc_gain(y: np.ndarray, model: np.ndarray, baseline: np.ndarray) -> Callable[[np.ndarray], float]:
    return lambda r: ev.auroc(y[r], model[r]) - ev.auroc(y[r], baseline[r])


def _with_ci(y: np.ndarray, s: np.ndarray, patient: np.ndarray, reps: int, seed: int) -> dict[str, Any]:
    return {
        "auroc": ev.auroc(y, s),
        "auroc_ci": list(ev.bootstrap_ci(patient, lambda r: ev.auroc(y[r], s[r]), reps, seed)),
        "auprc": ev.auprc(y, s),
        "auprc_ci": list(ev.bootstrap_ci(patient, lambda r: ev.auprc(y[r], s[r]), reps, seed)),
    }


def _roc(y: np.ndarray, s: np.ndarray, points: int = 60) -> list[tuple[float, float]]:
    """A coarse ROC curve (false positive rate, true positive rate) for the model card's picture."""
    if not (y == 1).any() or not (y == 0).any():
        return []
    thresholds = np.unique(np.quantile(s, np.linspace(0, 1, points)))[::-1]
    return [(float((s[y == 0] >= t).mean()), float((s[y == 1] >= t).mean())) for t in thresholds]


def forecast_metrics(ckpt: Checkpoint, x: np.ndarray, forecast: np.ndarray) -> dict[str, Any]:
    """Per vital: how often the observed window mean fell inside its interval (forecast from the windows
    before it), i.e. 1 - the anomaly rate, on test windows where the check applies."""
    out = {}
    centre, scale = np.asarray(ckpt.center), np.asarray(ckpt.scale)
    _mu, low, high = ckpt.forecast_intervals(forecast[:, 0])
    for j, (stream, (f, p)) in enumerate(zip(FORECAST_VITALS, ckpt.config.forecast_pairs, strict=True)):
        ok = (x[:, -1, p] > 0) & (x[:, :-1, p].sum(axis=1) > 0)
        observed = centre[f] + scale[f] * x[ok, -1, f]
        inside = (observed >= low[ok, j]) & (observed <= high[ok, j])
        out[stream] = {"windows": int(ok.sum()), "coverage": float(inside.mean()) if ok.any() else float("nan")}
    return out


def targets(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets, measured: each with the figures it compares and whether it is met."""
    row = m["heads"]["any"]
    best = row["best_baseline"]
    best_auprc = max(row[b]["auprc"] for b in BASELINES)
    model_alerts, red = m["alerts"]["model"], m["alerts"]["news2_red"]
    return {
        "auroc": {
            "model": row["model"]["auroc"],
            "required": row[best]["auroc"] + 0.05,
            "met": bool(row["model"]["auroc"] >= row[best]["auroc"] + 0.05),
        },
        "auprc": {
            "model": row["model"]["auprc"],
            "required": 1.5 * best_auprc,
            "met": bool(row["model"]["auprc"] >= 1.5 * best_auprc),
        },
        "sensitivity_at_budget": {
            "model": model_alerts["sensitivity"],
            "required": 1.5 * red["sensitivity"],
            "met": bool(model_alerts["sensitivity"] >= 1.5 * red["sensitivity"] and model_alerts["sensitivity"] > 0),
        },
        "median_lead_minutes": {
            "model": model_alerts["median_lead_minutes"],
            "required": 20.0,
            "met": bool(model_alerts["median_lead_minutes"] >= 20.0),
        },
        "ece": {"model": m["calibration"]["ece"], "required": 0.05, "met": bool(m["calibration"]["ece"] <= 0.05)},
    }


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
    logits, _ = network_outputs(old, split_inputs(old, test))
    p = old.probabilities(logits)[:, old.config.heads.index("any")]
    y = test.y[:, HEADS.index("any")]
    return {"auroc": ev.auroc(y, p), "auprc": ev.auprc(y, p)}, old.version


# --- model card -----------------------------------------------------------------------------------------------


def _ci(r: dict[str, Any], key: str) -> str:
    lo, hi = r[f"{key}_ci"]
    return f"{r[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def _lead(a: dict[str, Any]) -> str:
    lo, hi = a.get("median_lead_ci", [float("nan"), float("nan")])
    return f"{a['median_lead_minutes']:.1f} [{lo:.1f}, {hi:.1f}]"


def model_card(ckpt: Checkpoint, path: Path, promotion: dict[str, Any] | None = None) -> None:
    m, t = ckpt.metrics, ckpt.training
    d, c = t["data"], t["config"]
    pics = path.stem.replace("model_card", "")  # "" or ".candidate": pictures are named alike
    lines = [
        f"# Risk LSTM `{ckpt.version}`",
        "",
        f"Trained by `vitalstream train` (flow `vitalstream-train`, `models/train.py`) in {t['seconds']} s with "
        f"`--patients {c['patients']} --hours {c['hours']} --epochs {c['epochs']} --seed {c['seed']}`.",
        f"Data: {d['source']}: {d['simulated_patients']} patients x {d['hours_per_patient']} h, profiles "
        + ", ".join(f"{k} {v}" for k, v in d["profiles"].items())
        + "; events "
        + ", ".join(f"{k} {v}" for k, v in d["events"].items())
        + f". Split by patient: {d['patients']['train']} train / {d['patients']['val']} validation / "
        f"{d['patients']['test']} test. Windows during an ongoing event ({d['windows_during_events_excluded']}) "
        "are left out of training and evaluation: scoring them would reward detection, not prediction.",
        f"Model: {ckpt.config.layers}-layer LSTM x {ckpt.config.hidden} hidden over {ckpt.config.window_count} "
        f"windows of 5 min; horizon {ckpt.config.horizon_minutes} min; overall risk from the "
        f"{'condition heads, 1 - prod(1 - p)' if ckpt.any_source == 'conditions' else 'any-event head'} "
        f"(validation AUROC: head {m['validation_any_auroc'].get('head', float('nan')):.3f}, "
        f"from conditions {m['validation_any_auroc'].get('conditions', float('nan')):.3f}); isotonic calibration.",
        "",
        f"Test set: {m['test_windows']} windows of {m['test_patients']} held-out patients "
        f"({m['test_patient_days']:.1f} patient-days). Intervals: 95 % percentile bootstrap over patients "
        f"({c['bootstrap']} resamples).",
        "",
        "## Targets",
        "",
        "| target | model | required | met |",
        "|---|---|---|---|",
    ]
    names = {
        "auroc": "overall AUROC >= best baseline + 0.05",
        "auprc": "overall AUPRC >= 1.5 x best baseline",
        "sensitivity_at_budget": (
            f"sensitivity at <= {m['alert_budget_per_day']:g} alert/patient-day >= 1.5 x NEWS2 red rule"
        ),
        "median_lead_minutes": "median lead time first alert -> onset >= 20 min",
        "ece": "expected calibration error <= 0.05",
    }
    for key, r in m["targets"].items():
        lines.append(f"| {names[key]} | {r['model']:.3f} | {r['required']:.3f} | {'yes' if r['met'] else '**no**'} |")
    for metric in ("auroc", "auprc"):
        lines += [
            "",
            f"## {metric.upper()} per head (95 % CI)",
            "",
            "| head | positives | model | "
            + " | ".join(BASELINES.values())
            + (" | model - best baseline (paired) |" if metric == "auroc" else " |"),
            "|---|---|---|" + "---|" * len(BASELINES) + ("---|" if metric == "auroc" else ""),
        ]
        for h in HEADS:
            r = m["heads"][h]
            gain = r["model"]["auroc"] - r[r["best_baseline"]]["auroc"]
            lo, hi = r["auroc_gain_ci"]
            cells = [_ci(r["model"], metric), *(_ci(r[b], metric) for b in BASELINES)]
            if metric == "auroc":
                cells.append(f"{gain:+.3f} [{lo:+.3f}, {hi:+.3f}] vs {BASELINES[r['best_baseline']]}")
            lines.append(f"| {h} | {r['positives']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Alerting on the overall risk at <= {m['alert_budget_per_day']:g} alert per patient-day",
        "",
        "An alert is a window whose score reaches the threshold, at most one per patient per horizon (repeats "
        "suppressed). Sensitivity: events with an alert in the hour before onset, among events with a scored "
        "window in that hour; PPV: alerts followed by an onset within the hour; lead time: onset minus the first "
        "such alert (its interval: patients with a detected event resampled, threshold fixed). The NEWS2 red rule "
        "is a fixed rule, shown at its own alert rate.",
        "",
        "| scorer | threshold | alerts / patient-day | sensitivity | PPV | median lead, min [95 % CI] | events |",
        "|---|---|---|---|---|---|---|",
    ]
    label = {"model": "model", **BASELINES, "news2_red": "NEWS2 red rule (HR <= 40 or >= 131, RR <= 8 or >= 25)"}
    for name, a in m["alerts"].items():
        lines.append(
            f"| {label[name]} | {a['threshold']:.3g} | {a['alerts_per_patient_day']:.2f} | {a['sensitivity']:.3f} | "
            f"{a['ppv']:.3f} | {_lead(a)} | {a['detected']} / {a['events']} |"
        )
    cal = m["calibration"]
    lines += [
        "",
        "## Calibration (overall risk, test windows, 10 equal-width bins)",
        "",
        f"Expected calibration error {cal['ece']:.3f} after isotonic calibration on the validation patients "
        f"({cal['ece_uncalibrated']:.3f} without it: the heads are trained with class weights).",
        "",
        "| predicted | observed | windows |",
        "|---|---|---|",
        *(f"| {mp:.3f} | {rate:.3f} | {n} |" for mp, rate, n in cal["bins"]),
        "",
        "## Forecasts and anomalies",
        "",
        f"Each vital's next-window mean is forecast with a {100 * ckpt.forecast_coverage:g} % interval "
        "(Gaussian head, width set on the validation patients); an observed mean outside the interval "
        "forecast for its window is an anomaly. Test coverage: "
        + ", ".join(f"{k} {v['coverage']:.3f} ({v['windows']} windows)" for k, v in m["forecast"].items())
        + ".",
        "",
    ]
    pre = m.get("precursors")
    if pre:
        lines += [
            "## What the signal allows",
            "",
            "Precursors in the simulator (`pipeline/simulate.py`): glucose moves towards the episode level at "
            "1-3 mg/dL/min (the rate bands of CGM trend arrows, Dexcom user's manual); heart and respiration "
            "rate creep for 1-4 hours towards an abnormal level short of the NEWS2 red thresholds, then cross "
            "them in a 2-15 minute decompensation (abnormal vital signs 1-4 h before most in-hospital cardiac "
            "arrests, severely abnormal ones before few: Andersen et al., Resuscitation 2016); activity falls and "
            "low-confidence stumbles appear 0.5-3 hours before a fall. The fall prodrome's length, the creep's "
            "shape and the 25 % share with no precursor are modelling assumptions, not measured figures.",
            "",
            f"Of the {pre['events']} test events the alert figures count, {pre['no_precursor']} had no precursor in "
            "the simulation (injected with no warning, or caused by no injected episode); the median time from "
            "the start of an event's precursor (when it has covered a tenth of its excursion: before that it is "
            f"lost in the noise) to its threshold onset is {pre['median_precursor_minutes']:.1f} "
            f"min over all of them ({pre['median_precursor_minutes_when_present']:.1f} min where there is one), "
            f"and {100 * pre['share_with_precursor_over_20_minutes']:.0f} % give 20 min or more"
            + (
                " (uncapped, where there is one: quartiles {:.0f} / {:.0f} / {:.0f} min; the figures above are capped "
                "at the horizon).".format(*pre["precursor_minutes_quartiles_when_present"])
                if pre.get("precursor_minutes_quartiles_when_present")
                else "."
            )
            + " An alert that fired "
            "the moment each precursor began would have that median lead time; the model's comes from the events "
            f"it detects ({pre['model_detected']}).",
            "",
        ]
    if promotion is not None:
        lines += [
            "## Promotion",
            "",
            f"{'Promoted' if promotion['promoted'] else 'Not promoted'}: {promotion['reason']} "
            f"(shipped: {promotion['shipped']}).",
            "",
        ]
    lines += [
        f"![loss curves](loss_curve{pics}.png) ![calibration](calibration{pics}.png) ![ROC](roc{pics}.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def pictures(ckpt: Checkpoint, folder: Path, suffix: str = "") -> None:
    """loss_curve.png, calibration.png and roc.png beside the checkpoint (skipped without matplotlib,
    which only the dev extra installs)."""
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history, m = ckpt.training["history"], ckpt.metrics
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot([h["epoch"] for h in history], [h["val_loss"] for h in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted BCE + forecast NLL")
    ax.set_title("Risk LSTM training (best validation epoch kept)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / f"loss_curve{suffix}.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for key, name in (("bins_uncalibrated", "before calibration"), ("bins", "calibrated")):
        pts = m["calibration"][key]
        ax.plot([b[0] for b in pts], [b[1] for b in pts], marker="o", label=name)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("observed event rate")
    ax.set_title(f"Calibration, overall risk (ECE {m['calibration']['ece']:.3f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / f"calibration{suffix}.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    label = {"model": "model", **BASELINES}
    for name, pts in m["roc"].items():
        auc = m["heads"]["any"][name]["auroc"]
        ax.plot([0.0] + [p[0] for p in pts], [0.0] + [p[1] for p in pts], label=f"{label[name]} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, event of any kind within 60 min")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / f"roc{suffix}.png", dpi=100)
    plt.close(fig)


def print_result(result: dict[str, Any]) -> None:
    """What `vitalstream train` prints: the targets, the promotion verdict and where the checkpoint went."""
    print(json.dumps(result["metrics"]["targets"], indent=1))
    print(f"{'promoted' if result['promoted'] else 'NOT promoted'}: {result['reason']}")
    print(f"saved {result['path']} ({Path(result['path']).stat().st_size / 1024:.0f} KiB), version {result['version']}")


if __name__ == "__main__":  # `python -m models.train ...` is `vitalstream train ...`
    from cli.main import main

    raise SystemExit(main(["train", *sys.argv[1:]]))
