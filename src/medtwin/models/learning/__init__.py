"""Learning for decision support: challenge utility, PhysioNet 2019 reader, simulated cohort.

- :mod:`~medtwin.models.learning.utility`: the PhysioNet/CinC 2019 sepsis utility score.
- :mod:`~medtwin.models.learning.physionet`: the challenge's ``.psv`` patient files.
- :mod:`~medtwin.models.learning.cohort`: a simulated cohort in the same layout.
"""

from medtwin.models.learning.cohort import GeneratedCohort, generate_cohort
from medtwin.models.learning.physionet import (
    FEATURES,
    HEADER,
    PatientSeries,
    parse_psv,
    read_directory,
    read_psv,
    stack,
)
from medtwin.models.learning.utility import (
    CohortUtility,
    best_predictions,
    cohort_utility,
    prediction_utility,
    sepsis_onset,
)

__all__ = [
    "FEATURES",
    "HEADER",
    "CohortUtility",
    "GeneratedCohort",
    "PatientSeries",
    "best_predictions",
    "cohort_utility",
    "generate_cohort",
    "parse_psv",
    "prediction_utility",
    "read_directory",
    "read_psv",
    "sepsis_onset",
    "stack",
]
