"""Training: state, optimizer, loss, the pure train step, FLOPs/MFU, metrics, checkpointing and the loop."""
