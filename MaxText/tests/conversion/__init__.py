"""Tests of MaxText.conversion (mirrors MaxText/conversion/)."""
