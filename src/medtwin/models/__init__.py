"""Modeling layer: physiology, scores, learning. No I/O."""
