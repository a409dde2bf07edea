"""The risk network as ONNX, for onnxruntime in the pipeline (`--engine onnx`) or on an edge device.

The graph holds the network only (features in, logits and forecasts out); calibration and intervals are
the checkpoint's plain numbers, applied by `Checkpoint.probabilities` / `forecast_intervals` on either
side. The checkpoint's version and digest travel in the model's metadata, so a scorer can refuse an ONNX
file exported from another checkpoint.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from models.lstm import Checkpoint

OPSET = 17


def export_onnx(checkpoint: Checkpoint, path: Path | None = None) -> bytes:
    """Export the checkpoint's network (dynamic batch, fixed L) and return the ONNX bytes; write them to
    `path` when given."""
    import onnx

    net = checkpoint.model()
    example = torch.zeros((2, checkpoint.config.window_count, checkpoint.config.n_features))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated; it needs no onnxscript and maps nn.LSTM
        # onto ONNX's LSTM operator. Its warnings are not actionable for a user of this command.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
            dynamo=False,
            input_names=["x"],
            output_names=["logits", "forecast"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}, "forecast": {0: "batch"}},
            opset_version=OPSET,
        )
    model = onnx.load_from_string(buf.getvalue())
    for key, value in {
        "checkpoint_version": checkpoint.version,
        "checkpoint_digest": checkpoint.digest,
        "feature_names": ",".join(checkpoint.feature_names),
        "heads": ",".join(checkpoint.config.heads),
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    data: bytes = model.SerializeToString()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return data
