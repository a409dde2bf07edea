"""The training flow: simulate -> train -> calibrate -> evaluate -> promote or not -> checkpoint + model card.

Thin on purpose: the work lives in `models.train`, `models.card` and `models.figures`; the flow adds what
orchestration adds (a named run, logs, a schedule when served) and applies the promotion rules
(`models.promotion`): the new checkpoint replaces the one at `out` only when it beats it on the same test
windows or, when its training procedure changed, when that procedure beats the shipped one leave one dataset
out (or `force`); otherwise it is written beside it as a candidate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.exceptions import MissingContextError

from models.card import model_card
from models.figures import pictures
from models.lstm import DEFAULT_CHECKPOINT
from models.promotion import PROCEDURE_SEEDS, decide, procedure_fields
from models.train import TrainConfig, train


@flow(name="vitalstream-train", validate_parameters=False)
def training_flow(
    patients: int = TrainConfig.patients,
    hours: float = TrainConfig.hours,
    epochs: int = TrainConfig.epochs,
    seed: int = TrainConfig.seed,
    out: Path = DEFAULT_CHECKPOINT,
    force: bool = False,
    bootstrap: int = TrainConfig.bootstrap,
    real: tuple[str, ...] = (),
    holdout: str = "",
    real_roots: tuple[str, ...] = (),
    real_patients: int = TrainConfig.real_patients,
    real_hours: float = TrainConfig.real_hours,
    procedure_seeds: tuple[int, ...] = PROCEDURE_SEEDS,
    procedure: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train on simulated patients and the `real` cohorts (models.cohorts); write the checkpoint, its model
    card and pictures beside `out`. With `holdout`, that cohort is left out of training and validation and
    is the real test set (leave one dataset out). `procedure` sets other `TrainConfig` fields (how the model
    learns); a procedure other than the shipped checkpoint's is judged leave one dataset out with
    `procedure_seeds`."""
    try:
        logger: Any = get_run_logger()
    except MissingContextError:  # called as training_flow.fn(...), outside a flow run (tests)
        logger = logging.getLogger(__name__)
    unknown = sorted(set(procedure or {}) - set(procedure_fields()))
    if unknown:
        raise ValueError(
            f"procedure: {', '.join(unknown)} not a training-procedure field; it takes "
            f"{', '.join(procedure_fields())} (what the model trains on is set by the flow's own parameters)"
        )
    cfg = TrainConfig(
        patients=patients,
        hours=hours,
        epochs=epochs,
        seed=seed,
        bootstrap=bootstrap,
        real=tuple(real),
        holdout=holdout,
        real_roots=tuple(str(r) for r in real_roots),
        real_patients=real_patients,
        real_hours=real_hours,
        **(procedure or {}),
    )
    ckpt, splits = train(cfg, log=logger.info)
    out = Path(out)
    promotion = decide(cfg, ckpt, splits["test"], out, force, tuple(procedure_seeds), log=logger.info)
    promoted, reason = promotion["promoted"], promotion["reason"]
    ckpt.metrics["promotion"] = promotion
    suffix = "" if promoted else ".candidate"
    path = out if promoted else out.with_name(f"{out.stem}{suffix}{out.suffix}")
    ckpt.save(path)
    model_card(ckpt, out.with_name(f"model_card{suffix}.md"), ckpt.metrics["promotion"])
    pictures(ckpt, out.parent, suffix)
    logger.info(
        "%s %s (%s), version %s", "saved" if promoted else "kept the shipped one; candidate", path, reason, ckpt.version
    )
    return {"version": ckpt.version, "path": str(path), "metrics": ckpt.metrics, "promoted": promoted, "reason": reason}
