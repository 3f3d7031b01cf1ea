"""Tests of MaxText.models (mirrors MaxText/models/)."""
