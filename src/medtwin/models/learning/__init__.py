"""Learning for decision support: challenge utility, PhysioNet 2019 reader, simulated cohort.

- :mod:`~medtwin.models.learning.utility`: the PhysioNet/CinC 2019 sepsis utility score.
- :mod:`~medtwin.models.learning.physionet`: the challenge's ``.psv`` patient files.
- :mod:`~medtwin.models.learning.cohort`: a simulated cohort in the same layout.
- :mod:`~medtwin.models.learning.features`: window, trend and missingness features.
- :mod:`~medtwin.models.learning.training`: patient-level splits, LightGBM, the logistic
  baseline, calibration and evaluation.
- :mod:`~medtwin.models.learning.explain`: SHAP explanations per prediction (imported
  on its own: it is not re-exported here, since it loads the module protocol).
"""

from medtwin.models.learning.cohort import GeneratedCohort, generate_cohort
from medtwin.models.learning.features import (
    DEFAULT_SPEC,
    FeatureSpec,
    PatientFeatures,
    hourly_features,
    hourly_grid,
    latest_features,
    patient_features,
    serving_features,
)
from medtwin.models.learning.physionet import (
    FEATURES,
    HEADER,
    PatientSeries,
    parse_psv,
    read_directory,
    read_psv,
    stack,
)
from medtwin.models.learning.training import (
    Calibrator,
    Evaluation,
    GbmParams,
    LogisticBaseline,
    PatientSplit,
    RiskModel,
    TrainingResult,
    evaluate,
    fit_calibrator,
    news2_scores,
    patient_split,
    train_gbm,
    train_logistic,
    train_risk_model,
)
from medtwin.models.learning.utility import (
    CohortUtility,
    best_predictions,
    cohort_utility,
    prediction_utility,
    sepsis_onset,
)

__all__ = [
    "DEFAULT_SPEC",
    "FEATURES",
    "HEADER",
    "Calibrator",
    "CohortUtility",
    "Evaluation",
    "FeatureSpec",
    "GbmParams",
    "GeneratedCohort",
    "LogisticBaseline",
    "PatientFeatures",
    "PatientSeries",
    "PatientSplit",
    "RiskModel",
    "TrainingResult",
    "best_predictions",
    "cohort_utility",
    "evaluate",
    "fit_calibrator",
    "generate_cohort",
    "hourly_features",
    "hourly_grid",
    "latest_features",
    "news2_scores",
    "parse_psv",
    "patient_features",
    "patient_split",
    "prediction_utility",
    "read_directory",
    "read_psv",
    "sepsis_onset",
    "serving_features",
    "stack",
    "train_gbm",
    "train_logistic",
    "train_risk_model",
]
