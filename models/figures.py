"""The model card's pictures: loss curves, calibration and ROC of the overall risk, as PNGs."""

from __future__ import annotations

from pathlib import Path

from models.evaluate import BASELINES
from models.lstm import Checkpoint


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
