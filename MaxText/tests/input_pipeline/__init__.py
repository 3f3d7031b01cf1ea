"""Tests of MaxText.input_pipeline (mirrors MaxText/input_pipeline/)."""
