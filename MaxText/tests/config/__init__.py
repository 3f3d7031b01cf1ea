"""Tests of MaxText.config (mirrors MaxText/config/)."""
