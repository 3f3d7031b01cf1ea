"""Inference: KV cache, sampling, and prefill / autoregressive decode on the training model."""
