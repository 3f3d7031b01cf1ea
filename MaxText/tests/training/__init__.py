"""Tests of MaxText.training (mirrors MaxText/training/)."""
