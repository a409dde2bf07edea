"""The risk model: `lstm` (network and checkpoint), `scorer` (batch inference), `train` (the training loop),
`evaluate`, `labels`, `export` (ONNX); `checkpoints/` holds the shipped weights and model card."""
