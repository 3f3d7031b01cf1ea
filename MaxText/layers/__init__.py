"""Flax Linen layers, one file per family. Every parameter and activation carries logical axis names."""
