"""Tests of MaxText.checkpoint (mirrors MaxText/checkpoint/)."""
