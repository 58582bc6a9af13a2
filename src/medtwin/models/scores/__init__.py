"""Clinical early-warning scores (vectorized over patients)."""

from medtwin.models.scores.news2 import ACVPU, BANDS, INPUT_CODES, PARAMETERS, News2Batch, news2

__all__ = ["ACVPU", "BANDS", "INPUT_CODES", "PARAMETERS", "News2Batch", "news2"]
