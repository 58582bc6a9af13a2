"""Data assimilation for personalized twins: Bayesian estimation from measurements."""

from medtwin.models.assimilation.glucose_filter import (
    PERSONAL,
    GlucosePrior,
    GlucoseTwins,
    Settings,
    assimilate,
    basal_insulin_pmol_l,
    init_twins,
    population_prior,
)
from medtwin.models.assimilation.glucose_forecast import (
    HORIZONS_MIN,
    GlucoseForecast,
    WhatIf,
    WhatIfResult,
    forecast,
    whatif,
)
from medtwin.models.assimilation.glucose_map import GlucoseMapResult, map_fit
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
    "HORIZONS_MIN",
    "PERSONAL",
    "STATEMENT",
    "GlucoseForecast",
    "GlucoseMapResult",
    "GlucosePrior",
    "GlucoseTwins",
    "Level",
    "MapResult",
    "PopulationModel",
    "Recommendation",
    "Settings",
    "Target",
    "WhatIf",
    "WhatIfResult",
    "assimilate",
    "basal_insulin_pmol_l",
    "forecast",
    "init_twins",
    "map_estimate",
    "map_fit",
    "population_prior",
    "predict_levels",
    "recommend_dose",
    "whatif",
]
