"""Garbage-collector settings for long-running medtwin processes.

Ingestion allocates millions of short-lived containers (parsed JSON, rows),
and CPython's default first-generation threshold (700 allocations) makes the
collector walk the young generation, and every tenth time the older ones,
again and again while a large Bundle is processed: about a fifth of FHIR
load time. The data path makes few reference cycles, so collecting less often
costs little memory. ``gc.freeze()`` moves what exists at start-up (modules,
compiled validators, settings) out of the collector's view for good.
"""

from __future__ import annotations

import gc

__all__ = ["tune_collector"]

# Young-generation allocations between collections (CPython's default: 700), and
# how many young collections make one of the middle and of the old generation.
THRESHOLDS = (50_000, 20, 100)


def tune_collector() -> None:
    """Collect less often, and freeze what start-up allocated (idempotent)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
