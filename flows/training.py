"""The training flow: simulate -> train -> calibrate -> evaluate -> checkpoint + model card.

Thin on purpose: the work lives in `models.train`; the flow adds what orchestration adds (a named run,
logs, a schedule when served).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from models.lstm import DEFAULT_CHECKPOINT
from models.train import TrainConfig, loss_curve, model_card, train


@flow(name="vitalstream-train", validate_parameters=False)
def training_flow(
    patients: int = TrainConfig.patients,
    hours: float = TrainConfig.hours,
    epochs: int = TrainConfig.epochs,
    seed: int = TrainConfig.seed,
    out: Path = DEFAULT_CHECKPOINT,
) -> dict[str, Any]:
    """Train on simulated patients and write the checkpoint, its model card and loss curve beside it."""
    logger = get_run_logger()
    cfg = TrainConfig(patients=patients, hours=hours, epochs=epochs, seed=seed)
    ckpt, metrics = train(cfg, log=logger.info)
    out = Path(out)
    ckpt.save(out)
    model_card(ckpt, out.with_name("model_card.md"))
    loss_curve(ckpt.training["history"], out.with_name("loss_curve.png"))
    logger.info("saved %s, version %s", out, ckpt.version)
    return {"version": ckpt.version, "path": str(out), "metrics": metrics}
