"""Tests of MaxText.layers (mirrors MaxText/layers/)."""
