"""Tests of MaxText.inference (mirrors MaxText/inference/)."""
