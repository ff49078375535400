"""Training: the per-device step, its parallel wrappers, checkpoints, BatchNorm statistics, the loop."""
