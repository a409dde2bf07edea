"""Promotion: when a newly trained checkpoint replaces the shipped one (`decide`; `flows/training.py` calls it).

Two questions, two rules:
- **The same procedure, new weights** (a nightly run, another seed, new data): the checkpoint rule,
  `should_promote`. Both checkpoints score the candidate's test windows; on real windows, per cohort and
  sensor configuration, the candidate needs a higher mean AUROC and none lower by more than
  PROMOTION_TOLERANCE; without comparable real windows, the simulated test windows decide.
- **A changed procedure** (any `TrainConfig` field outside `DATA_FIELDS`: the network, the loss, the
  augmentation): the procedure rule, `procedure_verdict`. The targets are about cohorts the model has never
  seen, and a test split of the training cohorts rewards what a model learns about those cohorts in
  particular. So both procedures are trained leave one dataset out with the same seeds (`compare_procedures`),
  and the candidate's procedure needs a higher mean any-event AUROC over every held-out cohort and seed, no
  cohort's mean (over the seeds) lower by more than PROMOTION_TOLERANCE on any target it is judged on
  (any-event, hypoglycaemia), and every simulated target the shipped checkpoint meets still met.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from models import evaluate as ev
from models.evaluate import Split
from models.lstm import Checkpoint
from models.train import LODO_EPOCHS, LODO_PATIENTS, SIM, TrainConfig, train
from pipeline.model_contract import CONDITIONS, HEADS, sensor_configuration

PROMOTION_TOLERANCE = 0.02  # AUROC a candidate may lose on one real cohort's configuration


def should_promote(new: dict[str, Any], shipped: dict[str, Any] | None) -> tuple[bool, str]:
    """A new checkpoint replaces the shipped one only if it ranks the same test windows better. Where both
    were scored on real held-out windows (`real`: per cohort and sensor configuration with enough events),
    that decides: a higher mean AUROC over those groups and none lower by more than PROMOTION_TOLERANCE.
    Otherwise the overall AUROC on the simulated test windows decides (ties keep the shipped one, which is
    known to work downstream); so too when the shipped checkpoint split the real patients differently
    (`shipped_figures`), since some of the candidate's real test patients were then its training patients."""
    if shipped is None:
        return True, "no usable shipped checkpoint to compare with"
    new_real, old_real = new.get("real", {}), shipped.get("real", {})
    groups = [g for g in new_real if g in old_real and new_real[g]["positives"] >= ev.MIN_POSITIVES]
    if groups:
        gains = {g: new_real[g]["auroc"] - old_real[g]["auroc"] for g in groups}
        mean, worst = float(np.mean(list(gains.values()))), min(gains, key=lambda g: gains[g])
        what = (
            f"real held-out windows, {len(groups)} cohort configuration(s): mean AUROC gain {mean:+.3f}, "
            f"worst {worst} {gains[worst]:+.3f}"
        )
        if mean > 0 and gains[worst] >= -PROMOTION_TOLERANCE:
            return True, what
        return False, what + f" (needs > 0 and >= -{PROMOTION_TOLERANCE})"
    why = f" (real windows not compared: {shipped['not_compared']})" if shipped.get("not_compared") else ""
    if new["auroc"] > shipped["auroc"]:
        return (
            True,
            f"AUROC {new['auroc']:.3f} > shipped {shipped['auroc']:.3f} on the same simulated test windows{why}",
        )
    return False, f"AUROC {new['auroc']:.3f} <= shipped {shipped['auroc']:.3f} on the same simulated test windows{why}"


def figures(ckpt: Checkpoint, test: Split) -> dict[str, Any]:
    """A checkpoint's overall AUROC/AUPRC on the simulated test windows and, per real cohort and sensor
    configuration, its overall AUROC (with the assessed conditions only, as the product scores)."""
    logits, _ = ev.network_outputs(ckpt, ev.split_inputs(ckpt, test))
    assessed = test.assessed if test.assessed is not None else np.ones((len(test.y), len(CONDITIONS)), bool)
    p = ckpt.probabilities(logits, assessed, test.keys)[:, ckpt.config.heads.index("any")]
    y = test.y[:, HEADS.index("any")]
    source = test.source if test.source is not None else np.full(len(y), SIM, dtype=object)
    sim = source == SIM
    out: dict[str, Any] = {"auroc": ev.auroc(y[sim], p[sim]), "auprc": ev.auprc(y[sim], p[sim]), "real": {}}
    keys = sensor_configuration(assessed) if test.keys is None else test.keys
    for group in sorted(set(zip(source[~sim].tolist(), keys[~sim].tolist(), strict=True))):
        rows = (source == group[0]) & (keys == group[1])
        out["real"][f"{group[0]} [{group[1]}]"] = {"auroc": ev.auroc(y[rows], p[rows]), "positives": int(y[rows].sum())}
    return out


def load_shipped(path: Path) -> tuple[Checkpoint | None, str]:
    """The shipped checkpoint at `path` and its version, or None and why not (missing, unreadable, tampered)."""
    from models.lstm import load_checkpoint

    try:
        old = load_checkpoint(path)
    except FileNotFoundError:
        return None, "none"
    except ValueError as exc:
        return None, f"unusable: {str(exc).removeprefix(f'{path}: ')}"  # the card is read elsewhere: no local path
    return old, old.version


def shipped_figures(old: Checkpoint, ckpt: Checkpoint, test: Split) -> dict[str, Any] | None:
    """The shipped checkpoint's `figures` on the new model's test windows (each reads its own inputs of
    them), or None when it predicts another horizon (not comparable)."""
    if old.config.horizon_minutes != ckpt.config.horizon_minutes:
        return None
    shipped = figures(old, test)
    if not same_real_split(old.training.get("config", {}), ckpt.training.get("config", {})):
        # its training patients may be among these test patients: only the simulated windows are fair
        shipped["real"] = {}
        shipped["not_compared"] = "the shipped checkpoint was trained on another split of the real patients"
    return shipped


SPLIT_FIELDS = ("split_seed", "real_patients", "real_hours", "test_fraction", "val_fraction")


def same_real_split(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two training configurations drew and split the real patients alike (checkpoints trained
    before `split_seed` existed split by the training seed: never alike)."""
    return all(f in a and f in b and a[f] == b[f] for f in SPLIT_FIELDS)


# --- a changed procedure: judged leave one dataset out ------------------------------------------------------

# What a run trains on and how it is evaluated, not how it learns: a difference here is not a new procedure.
DATA_FIELDS = frozenset(
    {
        "patients", "hours", "seed", "split_seed", "epochs", "bootstrap", "real", "holdout", "real_roots",
        "real_patients", "real_hours", "val_fraction", "test_fraction", "alert_budget_per_day",
    }
)  # fmt: skip
# The value a procedure field had before checkpoints recorded it (what an older checkpoint was trained with).
BEFORE_RECORDED: dict[str, Any] = {"own_stream_heads": (), "recent_history": False}
JUDGED_HEADS = ("any", "hypoglycaemia")  # the AUROC targets
PROCEDURE_SEEDS = (0, 1)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def procedure_fields() -> list[str]:
    """The `TrainConfig` fields that say how the model learns (every field outside DATA_FIELDS)."""
    return [f.name for f in fields(TrainConfig) if f.name not in DATA_FIELDS]


def procedure_changes(new: dict[str, Any], old: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The procedure fields (`TrainConfig` outside DATA_FIELDS) in which two recorded training configs differ:
    {field: (old, new)}. A field the old config lacks reads as BEFORE_RECORDED, else as unknown (changed)."""
    out = {}
    for name in procedure_fields():
        was = old.get(name, BEFORE_RECORDED.get(name, "<not recorded>"))
        if _plain(was) != _plain(new.get(name)):
            out[name] = (_plain(was), _plain(new.get(name)))
    return out


def active_procedure(candidate: TrainConfig, changes: dict[str, tuple[Any, Any]]) -> TrainConfig | None:
    """The candidate's config with the shipped checkpoint's procedure (its values of the changed fields):
    both procedures then train on the same data. None when a changed field was not recorded."""
    if any(old == "<not recorded>" for old, _ in changes.values()):
        return None
    values: dict[str, Any] = {k: tuple(old) if isinstance(old, list) else old for k, (old, _) in changes.items()}
    return replace(candidate, **values)


def _held_out(job: tuple[TrainConfig, str]) -> dict[str, Any]:
    """One leave-one-dataset-out run, in a worker process with one thread: the held-out cohort's judged
    figures."""
    import torch

    torch.set_num_threads(1)
    cfg, name = job
    ckpt, _ = train(cfg, lambda *_: None)
    m = ckpt.metrics["real"][name]
    return {
        "heads": {
            h: {"auroc": r["model"]["auroc"], "enough_events": bool(r["enough_events"])} for h, r in m["heads"].items()
        },
        "ece": m["calibration"]["ece"],
    }


def compare_procedures(
    candidate: TrainConfig,
    active: TrainConfig,
    cohorts: tuple[str, ...],
    seeds: tuple[int, ...] = PROCEDURE_SEEDS,
    workers: int | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Train both procedures leave one dataset out (each cohort held out in turn, trained on the simulated
    patients and the others, at `vitalstream lodo`'s size), with the same seeds, side by side in worker
    processes: {cohort: {seed: {"candidate": figures, "active": figures}}}."""
    jobs, keys = [], []
    for name in cohorts:
        others = tuple(c for c in cohorts if c != name)
        for seed in seeds:
            for which, cfg in (("candidate", candidate), ("active", active)):
                patients, epochs = min(cfg.patients, LODO_PATIENTS), min(cfg.epochs, LODO_EPOCHS)
                run = replace(cfg, patients=patients, epochs=epochs, seed=seed, bootstrap=10, real=others, holdout=name)
                jobs.append((run, name))
                keys.append((name, seed, which))
    # one thread each; about 1.4 GB each with the four cohorts, hence at most 4 at a time
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1, 4))
    log(f"procedure changed: {len(jobs)} leave-one-dataset-out runs, {workers} at a time")
    out: dict[str, Any] = {}
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        for (name, seed, which), result in zip(keys, pool.map(_held_out, jobs), strict=True):
            out.setdefault(name, {}).setdefault(str(seed), {})[which] = result
            log(f"{name} held out, seed {seed}, {which}: any-event AUROC {result['heads']['any']['auroc']:.3f}")
    return out


def procedure_verdict(
    runs: dict[str, Any], changes: dict[str, Any], new_targets: dict[str, Any], shipped_targets: dict[str, Any]
) -> tuple[bool, str, dict[str, Any]]:
    """The procedure rule (module docstring) over `compare_procedures`' runs: (promote, reason, the paired
    gains per cohort and judged head, mean over the seeds)."""
    gains: dict[str, dict[str, float]] = {}
    any_gains = []
    for name, by_seed in runs.items():
        for head in JUDGED_HEADS:
            pairs = [
                s["candidate"]["heads"][head]["auroc"] - s["active"]["heads"][head]["auroc"]
                for s in by_seed.values()
                if head in s["candidate"]["heads"]
                and s["candidate"]["heads"][head]["enough_events"]
                and s["active"]["heads"][head]["enough_events"]
            ]
            pairs = [g for g in pairs if np.isfinite(g)]
            if pairs:
                gains.setdefault(name, {})[head] = float(np.mean(pairs))
                if head == "any":
                    any_gains += pairs
    changed = ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in changes.items())
    if not any_gains:
        return False, f"procedure changed ({changed}) but no held-out cohort had enough events to judge it", gains
    mean = float(np.mean(any_gains))
    worst = min(((n, h) for n, g in gains.items() for h in g), key=lambda k: gains[k[0]][k[1]])
    lost = [t for t, r in shipped_targets.items() if r.get("met") and not new_targets.get(t, {}).get("met")]
    what = (
        f"procedure changed ({changed}); leave one dataset out, {len(runs)} cohort(s) x "
        f"{len(next(iter(runs.values())))} seed(s): mean any-event AUROC gain {mean:+.3f}, worst "
        f"{worst[0]} {worst[1]} {gains[worst[0]][worst[1]]:+.3f}"
    )
    if lost:
        return False, what + f"; simulated target(s) no longer met: {', '.join(lost)}", gains
    if mean > 0 and gains[worst[0]][worst[1]] >= -PROMOTION_TOLERANCE:
        return True, what, gains
    return False, what + f" (needs > 0 and >= -{PROMOTION_TOLERANCE})", gains


def decide(
    cfg: TrainConfig,
    ckpt: Checkpoint,
    test: Split,
    out: Path,
    force: bool = False,
    seeds: tuple[int, ...] = PROCEDURE_SEEDS,
    log: Any = print,
) -> dict[str, Any]:
    """Whether `ckpt` (trained with `cfg`, its test windows `test`) replaces the checkpoint at `out`: the
    checkpoint rule, or the procedure rule where the procedure changed and a real cohort can judge it
    (module docstring); `force` promotes without the procedure rule's runs. Returns the card's promotion
    record: promoted, reason, shipped version, the shipped checkpoint's figures and the procedure runs."""
    old, shipped_version = load_shipped(out)
    shipped = shipped_figures(old, ckpt, test) if old is not None else None
    if old is not None and shipped is None:
        shipped_version += ": another horizon or feature set, not comparable"
    promoted, reason = should_promote(figures(ckpt, test), shipped)
    record: dict[str, Any] = {"shipped": shipped_version, "figures": shipped}
    changes = procedure_changes(ckpt.training["config"], old.training.get("config", {})) if old is not None else {}
    cohorts = (*cfg.real, *([cfg.holdout] if cfg.holdout else []))
    if old is not None and changes and not force:
        active = active_procedure(cfg, changes)
        if active is None or not cohorts:
            why = "the shipped checkpoint does not record it" if active is None else "no real cohort to judge it on"
            reason += f" (the procedure changed, but {why})"
        else:
            runs = compare_procedures(cfg, active, cohorts, seeds, log=log)
            checkpoint_rule = f"the checkpoint rule alone: {'yes' if promoted else 'no'}, {reason}"
            promoted, reason, gains = procedure_verdict(runs, changes, ckpt.metrics["targets"], old.metrics["targets"])
            reason += f"; {checkpoint_rule}"
            record["procedure"] = {"changes": changes, "gains": gains, "runs": runs}
    if force and not promoted:
        promoted, reason = True, f"forced ({reason})"
    return {"promoted": promoted, "reason": reason, **record}
