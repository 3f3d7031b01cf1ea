"""Tests of MaxText.parallel (mirrors MaxText/parallel/)."""
