"""The model card's pictures: loss curves, calibration and ROC of the overall risk, as PNGs; calibration on
the real cohorts, held out and within training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.card import read_lodo
from models.evaluate import BASELINES
from models.lstm import Checkpoint


def pictures(ckpt: Checkpoint, folder: Path, suffix: str = "") -> None:
    """loss_curve.png, calibration.png, roc.png and calibration_real.png (`real_calibration`) beside the
    checkpoint (skipped without matplotlib, which only the dev extra installs)."""
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
    real_calibration(ckpt, folder, suffix)


def real_calibration(ckpt: Checkpoint, folder: Path, suffix: str = "") -> None:
    """calibration_real.png: the overall risk's calibration on each real cohort, held out (`lodo.json` beside
    the checkpoint, written by `vitalstream lodo`) and on the training cohorts' own test patients; a point's
    area grows with its bin's windows, so a bin of three windows does not look like a finding."""
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lodo = read_lodo(folder / f"model_card{suffix}.md")
    panels: list[tuple[str, dict[str, Any]]] = [
        ("held out (leave one dataset out)", (lodo or {}).get("cohorts", {})),
        ("test patients of the training cohorts", ckpt.metrics.get("real", {})),
    ]
    if not any(cohorts for _, cohorts in panels):
        return
    names = sorted({name for _, cohorts in panels for name in cohorts})
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {name: cycle[i % len(cycle)] for i, name in enumerate(names)}  # one colour per cohort in both
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharey=True)
    for ax, (title, cohorts) in zip(axes, panels, strict=True):
        for name in sorted(cohorts):
            bins, ece = cohorts[name]["calibration"]["bins"], cohorts[name]["calibration"]["ece"]
            x, y = [b[0] for b in bins], [b[1] for b in bins]
            ax.plot(x, y, linewidth=1, color=colour[name], label=f"{name} (ECE {ece:.3f})")
            ax.scatter(x, y, s=[8 + 2.5 * b[2] ** 0.5 for b in bins], color=colour[name], alpha=0.7)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("predicted probability (bin mean)")
        ax.set_title(title if cohorts else f"{title}: none", fontsize=10)
        if cohorts:
            ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("observed event rate")
    fig.suptitle("Calibration of the overall risk on real recordings (point area: windows in the bin)", fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / f"calibration_real{suffix}.png", dpi=100)
    plt.close(fig)
