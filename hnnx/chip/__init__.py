"""Lowering integer graphs onto many-core neuromorphic chips (placeholder, filled below)."""
