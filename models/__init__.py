"""The risk model: `lstm` is the network, `train` its training loop, `checkpoints/` the shipped weights."""
