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
import zlib
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from models import augment
from models import evaluate as ev
from models.cohorts import cohort_file, draw_patients, load_cohort
from models.evaluate import Split
from models.labels import window_labels
from models.lstm import Checkpoint, LSTMConfig, RiskLSTM, absent_inputs, vital_pairs
from models.scorer import assessment, feature_matrix, model_inputs, sequences
from pipeline.features import window_features
from pipeline.model_contract import (
    CONDITIONS,
    HEADS,
    MODEL_FEATURES,
    WINDOW_FEATURES,
    RiskLevels,
    sensor_configuration,
)
from sim.simulate import PROFILES, SimulationConfig, detect_events, simulate

# --- config -------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    patients: int = 600
    hours: float = 12.0
    seed: int = 0  # simulated patients, augmentation, initial weights, batch order
    # Which real patients and stretches are drawn and how each cohort splits into train/val/test: apart from
    # `seed`, so that checkpoints trained with different seeds are judged on the same real test patients
    # (the promotion rule scores the shipped checkpoint on the candidate's test windows).
    split_seed: int = 0
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
    recent_trend_windows: int = 6  # LSTMConfig.recent_trend_windows: trends over the last 30 minutes too
    skip: bool = True  # LSTMConfig.skip: a linear path from the last window's inputs to the risk logits
    carry: bool = True  # LSTMConfig.carry_pairs: each vital's last value carried forward, and its age
    # LSTMConfig.own_stream_heads: conditions judged (and trained) from their own stream alone, as if the
    # patient wore no other sensor: the glucose conditions, better on unseen real cohorts (docs/model.md,
    # "Judged from their own stream"); () judges every condition from every stream
    own_stream_heads: tuple[str, ...] = ("hypoglycaemia", "hyperglycaemia")
    # MODEL_FEATURES' recent course (share of the last 6 hours' windows out of range per vital) beside the
    # window's own inputs; False: the window's own only (WINDOW_FEATURES, checkpoints before 2026-11-26)
    recent_history: bool = True
    real_weight: float = 5.0  # loss weight of a real cohort's window relative to a simulated one
    # "conditions": the overall risk combines the assessed conditions (what a sensor configuration needs);
    # "head" or "auto" (the better on validation AUROC) for the any-event head
    any_source: str = "conditions"
    bootstrap: int = 200  # patient resamples for confidence intervals
    alert_budget_per_day: float = 1.0
    forecast_coverage: float = 0.99
    augment: bool = True  # sensor configurations and pre-aggregation for simulated training/validation patients
    truncate_share: float = 0.2  # training sequences whose earlier windows are blanked (a record that just began)
    real: tuple[str, ...] = ()  # real cohorts (models.cohorts) split by patient into train/val/test
    holdout: str = ""  # a real cohort left out of training and validation: the whole cohort is test
    real_roots: tuple[str, ...] = ()  # extra folders holding cohorts (besides data/real/)
    real_patients: int = 200  # per cohort, patients drawn at random
    real_hours: float = 240.0  # per patient, one stretch of at most this long


# --- data ---------------------------------------------------------------------------------------------------

SIM = "sim"  # the source name of simulated patients (real cohorts go by their folder name)


@dataclass
class Source:
    """One source of patients: simulated, or a real cohort (models.cohorts)."""

    windows: pa.Table
    events: pa.Table
    patients: np.ndarray
    patient_days: float
    augmented: np.ndarray  # patients whose sensor configuration was drawn (not in any test set)


def simulated(cfg: TrainConfig, rng: np.random.Generator) -> tuple[Source, Any, dict[str, Any]]:
    """Simulated patients; with `augment`, those that can land in training or validation get a drawn sensor
    configuration and, for 40 % of them, heart and respiration rate as one averaged value per window. Labels
    come from the readings that remain, as for real patients."""
    sim = simulate(SimulationConfig(patients=cfg.patients, hours=cfg.hours, seed=cfg.seed, start_ms=1_795_305_600_000))
    patients = np.asarray(sim.patients.column("patient_id").to_pylist())
    rng.shuffle(patients)
    n_test = int(len(patients) * cfg.test_fraction)
    readings, info = sim.readings, {}
    augmented = patients[n_test:] if cfg.augment else patients[:0]
    if len(augmented):
        pick = pc.is_in(readings.column("patient_id"), pa.array(augmented.tolist()))
        kept, configs = augment.configure(readings.filter(pick), rng)
        pre = [p for p in augmented.tolist() if rng.random() < 0.4]
        kept = augment.pre_aggregate(kept, pre, interval_ms=cfg.window_ms, seed=cfg.seed)
        readings = pa.concat_tables([readings.filter(pc.invert(pick)), kept])
        names = ["+".join(c) for c in configs.values()]
        info = {"configurations": {k: names.count(k) for k in sorted(set(names))}, "pre_aggregated": len(pre)}
    events = detect_events(readings)
    windows = window_features(readings, cfg.window_ms)
    source = Source(windows, events, patients, len(patients) * cfg.hours / 24, augmented)
    return source, sim, info


def real_draw(config: dict[str, Any]) -> tuple[int, int]:
    """(patients drawn per cohort, the draw's seed): how a training run with `config` (TrainConfig's fields,
    as a checkpoint records them in `training["config"]`) draws each real cohort's patients."""
    return int(config["real_patients"]), int(config["split_seed"])


def seen_real_patients(config: dict[str, Any], name: str, readings: pa.Table) -> np.ndarray:
    """Every patient of cohort `name` (`readings`: models.cohorts.cohort_readings) that a training run with
    `config` drew, whichever of train, validation or test it landed in; none when it did not load the cohort.
    A config without `split_seed` (checkpoints from before it) raises ValueError: its draw is not known."""
    if name not in (*config.get("real", ()), config.get("holdout", "")):
        return np.asarray([], dtype=object)
    if "split_seed" not in config or "real_patients" not in config:
        raise ValueError("the checkpoint does not record how it drew its real patients (split_seed); retrain it")
    count, seed = real_draw(config)
    return draw_patients(readings, count, np.random.default_rng(seed))


def feature_names(cfg: TrainConfig) -> list[str]:
    """The inputs a network trained with `cfg` reads per window (a prefix of MODEL_FEATURES)."""
    return list(MODEL_FEATURES if cfg.recent_history else WINDOW_FEATURES)


def build_data(cfg: TrainConfig) -> tuple[dict[str, Split], np.ndarray, np.ndarray, dict[str, Any]]:
    rng = np.random.default_rng(cfg.seed)
    sim_source, sim, augmentation = simulated(cfg, rng)
    sources: dict[str, Source] = {SIM: sim_source}
    roots = tuple(Path(r) for r in cfg.real_roots)
    for name in dict.fromkeys([*cfg.real, *([cfg.holdout] if cfg.holdout else [])]):
        draw, draw_seed = real_draw(asdict(cfg))
        cohort = load_cohort(name, roots, draw, cfg.real_hours, draw_seed, cfg.window_ms)
        if cohort is None:
            raise FileNotFoundError(f"real cohort {name!r} not found under data/real/ or {', '.join(cfg.real_roots)}")
        ids = np.asarray(pc.unique(cohort.windows.column("patient_id")).to_pylist())
        # each cohort's own order: the same whichever other cohorts are loaded (leave one dataset out)
        np.random.default_rng([cfg.split_seed, zlib.crc32(name.encode())]).shuffle(ids)
        sources[name] = Source(cohort.windows, cohort.events, ids, cohort.patient_days, ids[:0])
    # split by patient within each source; the held-out cohort is all test (leave one dataset out)
    groups: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for name, src in sources.items():
        ids = src.patients
        if name == cfg.holdout:
            groups["test"] += ids.tolist()
            continue
        n_test, n_val = int(len(ids) * cfg.test_fraction), max(int(len(ids) * cfg.val_fraction), 1)
        groups["test"] += ids[:n_test].tolist()
        groups["val"] += ids[n_test : n_test + n_val].tolist()
        groups["train"] += ids[n_test + n_val :].tolist()
    windows = pa.concat_tables([s.windows for s in sources.values()])
    events = pa.concat_tables([s.events for s in sources.values()])
    source_of = {p: name for name, s in sources.items() for p in s.patients.tolist()}
    labels, ongoing = window_labels(windows, events, cfg.horizon_minutes)
    masks, rows_of, ctx_of = {}, {}, {}  # each group's windows and their model inputs
    for name, members in groups.items():
        masks[name] = np.asarray(
            pc.is_in(windows.column("patient_id"), pa.array(members)).to_numpy(zero_copy_only=False)
        )
        rows_of[name] = windows.filter(pa.array(masks[name]))
        ctx_of[name] = model_inputs(rows_of[name], window_ms=cfg.window_ms)
    names = feature_names(cfg)
    raw = feature_matrix(ctx_of["train"], np.zeros(len(names)), np.ones(len(names)))
    center = np.median(raw, axis=0).astype(np.float64)
    q75, q25 = np.percentile(raw, [75, 25], axis=0)
    scale = np.where(q75 - q25 > 1e-6, q75 - q25, np.maximum(np.abs(raw).max(axis=0), 1.0)).astype(np.float64)
    # Presence flags stay 0/1, so that a gap in the context (all zeros) reads as "absent", not as typical.
    for i, name in enumerate(names):
        if name.endswith("_present"):
            center[i], scale[i] = 0.0, 1.0
    splits = {}
    days = {name: s.patient_days / max(len(s.patients), 1) for name, s in sources.items()}
    for name, members in groups.items():
        mask, rows, ctx = masks[name], rows_of[name], ctx_of[name]
        x, present = sequences(ctx, feature_matrix(ctx, center, scale), rows, cfg.window_ms, cfg.window_count)
        assessed, readings = assessment(ctx, rows, cfg.window_ms, cfg.window_count)
        assessed &= (readings >= RiskLevels().min_context_readings)[:, None]
        keys = sensor_configuration(assessed, present, cfg.window_count)
        keep = ~ongoing[mask] & assessed.any(axis=1)  # what the product scores (not insufficient_data)
        evs = events.filter(pc.is_in(events.column("patient_id"), pa.array(members)))
        if sim.episodes is not None:  # real events have no injected episode: 0
            evs = evs.append_column("precursor_minutes", pa.array(ev.precursor_leads(evs, sim.episodes)))
        kept = rows.filter(pa.array(keep))
        who = kept.column("patient_id").to_pylist()
        splits[name] = Split(
            x[keep],
            labels[mask][keep],
            kept,
            ctx,
            evs,
            sum(days[source_of[p]] for p in members),
            assessed[keep],
            np.asarray([source_of[p] for p in who], dtype=object),
            keys[keep],
        )
    conditions = sim.events.column("condition").to_pylist()
    profiles = sim.patients.column("profile").to_pylist()
    data = {
        "source": "sim.simulate (synthetic patients; events by the published thresholds)",
        "simulated_patients": cfg.patients,
        "hours_per_patient": cfg.hours,
        "seed": cfg.seed,
        "split_seed": cfg.split_seed,
        "profiles": {p: profiles.count(p) for p in PROFILES},
        "events": {c: conditions.count(c) for c in CONDITIONS},
        "augmentation": augmentation,
        "real": {
            name: {
                "patients": len(s.patients),
                "patient_days": round(s.patient_days, 1),
                "windows": len(s.windows),
                "events": {c: s.events.column("condition").to_pylist().count(c) for c in CONDITIONS},
                "role": "held out (test only)" if name == cfg.holdout else "train/val/test by patient",
            }
            for name, s in sources.items()
            if name != SIM
        },
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
        n_features=len(feature_names(cfg)),
        hidden=cfg.hidden,
        layers=cfg.layers,
        window_count=cfg.window_count,
        horizon_minutes=cfg.horizon_minutes,
        recent_trend_windows=cfg.recent_trend_windows,
        skip=cfg.skip,
        carry_pairs=vital_pairs(("last",)) if cfg.carry else (),
        own_stream_heads=tuple(cfg.own_stream_heads),
    )
    model = RiskLSTM(mcfg)
    model.absent.copy_(torch.from_numpy(absent_inputs(center, scale)))  # as `Checkpoint.model` sets it
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tr, va = splits["train"], splits["val"]
    m_tr, m_va = ev.head_mask(tr).astype(np.float32), ev.head_mask(va).astype(np.float32)
    for split, m in ((tr, m_tr), (va, m_va)):
        if split.source is not None:
            m *= np.where(split.source == SIM, 1.0, cfg.real_weight).astype(np.float32)[:, None]
    pos = ((tr.y * m_tr).sum(axis=0) / np.maximum(m_tr.sum(axis=0), 1)).clip(1e-3, 0.5)
    # sqrt of the class ratio: rare heads get gradient without flooding the loss; calibration undoes it
    bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(np.sqrt((1 - pos) / pos), dtype=torch.float32), reduction="none")
    x_tr, y_tr, w_tr = torch.from_numpy(tr.x), torch.from_numpy(tr.y), torch.from_numpy(m_tr)
    x_va, y_va, w_va = torch.from_numpy(va.x), torch.from_numpy(va.y), torch.from_numpy(m_va)
    gen = torch.Generator().manual_seed(cfg.seed)

    def loss_of(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Risk BCE over the heads each window assesses (a condition without its sensor teaches nothing),
        plus the forecast NLL."""
        x_in = model.inputs(x)
        out = model.recurrent(x_in)
        logits = model.own_stream_logits(x, model.risk_logits(x_in, out))  # what inference answers
        risk = (bce(logits, y) * w).sum() / w.sum().clamp(min=1.0)
        return risk + cfg.forecast_weight * _forecast_loss(model, out, x)

    def truncated(x: torch.Tensor) -> torch.Tensor:
        """A share of sequences with their earlier windows blanked (zeros: "no data"), as when a record has
        just begun: short history must not read as safe."""
        n, length = x.shape[0], x.shape[1]
        cut = torch.randint(1, length, (n,), generator=gen)
        chosen = torch.rand(n, generator=gen) < cfg.truncate_share
        blank = (torch.arange(length)[None, :] < cut[:, None]) & chosen[:, None]
        return x.masked_fill(blank[:, :, None], 0.0)

    # the loop: AdamW steps with gradient clipping, the validation loss after each epoch; the best state is
    # kept and training stops after `patience` epochs without improvement
    best, best_state, bad_epochs, history = float("inf"), None, 0, []
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x_tr))
        total = 0.0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = loss_of(truncated(x_tr[idx]), y_tr[idx], w_tr[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val = float(loss_of(x_va, y_va, w_va))
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
        feature_names=feature_names(cfg),
        center=[float(v) for v in center],
        scale=[float(v) for v in scale],
        temperature=[1.0] * len(HEADS),
        forecast_coverage=cfg.forecast_coverage,
    )
    calibrate(ckpt, va, cfg.any_source)
    by_config = ckpt.metrics.get("calibration_by_config", {})
    ckpt.metrics = ev.evaluate(ckpt, splits, cfg)
    ckpt.metrics["calibration_by_config"] = by_config
    ckpt.digest = ckpt.compute_digest()
    ckpt.version = f"lstm-{datetime.now(UTC):%Y%m%d}-{ckpt.digest[:8]}"
    ckpt.training = {
        "config": asdict(cfg),
        "data": data,
        "history": history,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return ckpt, splits


def reevaluate(ckpt: Checkpoint, real_roots: tuple[str, ...] = ()) -> dict[str, Any]:
    """The checkpoint's figures again, with the evaluation code of today: its own splits rebuilt from its
    recorded training config (the same simulated and real patients, split alike), the same weights and
    calibration. Returns the new metrics, with the promotion and calibration records kept. `real_roots`
    replaces the recorded folders of the real cohorts (the same files elsewhere). Raises ValueError when the
    rebuilt training data does not give the checkpoint's own normalisation (the data changed)."""
    recorded = {k: v for k, v in ckpt.training["config"].items() if k in {f.name for f in fields(TrainConfig)}}
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()}
    cfg = TrainConfig(**values)
    if real_roots:
        cfg = replace(cfg, real_roots=real_roots)
    splits, center, scale, _ = build_data(cfg)
    if not (np.allclose(center, ckpt.center) and np.allclose(scale, ckpt.scale)):
        raise ValueError(
            "the checkpoint's recorded training data no longer gives its normalisation (simulator or cohorts "
            "changed, or another --real-data): its test patients cannot be rebuilt; retrain it instead"
        )
    metrics = ev.evaluate(ckpt, splits, cfg)
    for key in ("calibration_by_config", "promotion"):
        if key in ckpt.metrics:
            metrics[key] = ckpt.metrics[key]
    return metrics


# --- calibration --------------------------------------------------------------------------------------------


def enough_to_calibrate(y: np.ndarray, who: np.ndarray, pick: np.ndarray) -> bool:
    """Enough validation windows to fit an isotonic map on: 200 windows, 10 positives, 5 patients (one
    patient's base rate is no calibration for the next)."""
    return bool(pick.sum() >= 200 and y[pick].sum() >= 10 and len(set(who[pick].tolist())) >= 5)


def calibrate(ckpt: Checkpoint, val: Split, any_source: str = "conditions") -> None:
    """Fit on validation patients: isotonic maps per condition (on the windows that assess it); the overall
    risk ("conditions": 1 - prod(1 - p) over the assessed conditions; "head": the any-event head; "auto":
    the one that ranks validation windows better) with an isotonic map per sensor configuration, fitted on
    real validation windows of that configuration where there are enough (else on all of them), and an
    overall map for configurations without one; the forecast interval width for the wanted coverage."""
    logits, forecast = ev.network_outputs(ckpt, val.x)
    raw = 1 / (1 + np.exp(-logits.astype(np.float64)))
    any_i = HEADS.index("any")
    assessed = np.ones((len(val.y), len(CONDITIONS)), bool) if val.assessed is None else val.assessed
    ckpt.isotonic = [{} for _ in HEADS]
    ckpt.isotonic_by_config = {}
    for j, c in enumerate(CONDITIONS):
        i = HEADS.index(c)
        rows = assessed[:, j]
        ckpt.isotonic[i] = ev.fit_isotonic(raw[rows, i], val.y[rows, i]) if rows.any() else {}
    keys = sensor_configuration(assessed) if val.keys is None else val.keys
    y = val.y[:, any_i]
    overall, candidates = {}, {}
    for source in ("head", "conditions"):
        ckpt.any_source = source  # no overall maps yet: uncalibrated
        overall[source] = ckpt.probabilities(logits, assessed, keys)[:, any_i]
        ok = ~np.isnan(overall[source])
        candidates[source] = ev.auroc(y[ok], overall[source][ok])
    ckpt.any_source = max(candidates, key=lambda s: candidates[s]) if any_source == "auto" else any_source
    ckpt.metrics["validation_any_auroc"] = candidates
    combined = overall[ckpt.any_source]
    ok = ~np.isnan(combined)
    ckpt.isotonic[any_i] = ev.fit_isotonic(combined[ok], y[ok])
    real = np.zeros(len(y), bool) if val.source is None else val.source != "sim"
    who = np.asarray(val.targets.column("patient_id").to_pylist(), dtype=object)
    fitted = {}
    for key in sorted(set(keys[ok].tolist())):
        rows = (keys == key) & ok
        for name, pick in (("real", rows & real), ("all", rows)):
            if enough_to_calibrate(y, who, pick):
                ckpt.isotonic_by_config[key] = ev.fit_isotonic(combined[pick], y[pick])
                fitted[key] = {
                    "on": name,
                    "windows": int(pick.sum()),
                    "positives": int(y[pick].sum()),
                    "patients": len(set(who[pick].tolist())),
                }
                break
    ckpt.metrics["calibration_by_config"] = fitted
    # Split-conformal width: the z that covers `forecast_coverage` of validation windows' standardised errors.
    k = len(ckpt.config.forecast_pairs)
    z = []
    for j, (f, p) in enumerate(ckpt.config.forecast_pairs):
        ok = (val.x[:, -1, p] > 0) & (val.x[:, :-1, p].sum(axis=1) > 0)
        mu, logvar = forecast[ok, 0, j], np.clip(forecast[ok, 0, k + j], -20, 20)
        err = np.abs(val.x[ok, -1, f] - mu) / np.exp(0.5 * logvar)
        z.append(float(np.quantile(err, ckpt.forecast_coverage)) if ok.any() else 2.576)
    ckpt.forecast_z = z


LODO_PATIENTS, LODO_EPOCHS = 300, 12  # `vitalstream lodo`'s size: each held-out cohort trains a model


def leave_one_dataset_out(cfg: TrainConfig, cohorts: tuple[str, ...], log: Any = print) -> dict[str, Any]:
    """Per cohort, train on the simulated patients and every other cohort, and evaluate on the held-out
    cohort as a whole (`models.evaluate.evaluate_real`)."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"config": asdict(cfg), "cohorts": {}, "missing": [], "seconds_per_cohort": {}}
    roots = tuple(Path(r) for r in cfg.real_roots)
    for name in cohorts:
        if cohort_file(name, roots) is None:
            out["missing"].append(f"{name} (not found)")
            continue
        t1 = time.perf_counter()
        others = tuple(c for c in cohorts if c != name and cohort_file(c, roots) is not None)
        ckpt, _ = train(replace(cfg, real=others, holdout=name), log)
        out["cohorts"][name] = ckpt.metrics["real"][name]
        out["seconds_per_cohort"][name] = round(time.perf_counter() - t1, 1)
        log(f"{name} held out: " + json.dumps(ckpt.metrics["real"][name]["targets"], default=str))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def print_result(result: dict[str, Any]) -> None:
    """What `vitalstream train` prints: the targets, the promotion verdict and where the checkpoint went."""
    print(json.dumps(result["metrics"]["targets"], indent=1))
    print(f"{'promoted' if result['promoted'] else 'NOT promoted'}: {result['reason']}")
    print(f"saved {result['path']} ({Path(result['path']).stat().st_size / 1024:.0f} KiB), version {result['version']}")
