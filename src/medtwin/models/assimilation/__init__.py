"""Data assimilation for personalized twins: Bayesian estimation from measurements."""

from medtwin.models.assimilation.pk_map import (
    GOTI_2018_VANCOMYCIN,
    STATEMENT,
    Level,
    MapResult,
    PopulationModel,
    Recommendation,
    Target,
    map_estimate,
    predict_levels,
    recommend_dose,
)

__all__ = [
    "GOTI_2018_VANCOMYCIN",
    "STATEMENT",
    "Level",
    "MapResult",
    "PopulationModel",
    "Recommendation",
    "Target",
    "map_estimate",
    "predict_levels",
    "recommend_dose",
]
