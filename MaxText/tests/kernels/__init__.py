"""Tests of MaxText.kernels (mirrors MaxText/kernels/)."""
