"""The alarm rules shipped with medtwin (used when ``alarm_rules_file`` is not set).

Kept as text in a module, so that it travels with the package like the code.
NEWS2 escalation follows the RCP 2017 chart; qSOFA follows Seymour 2016. The
glucose forecast rule reads the glucose twins' forecasts (``medtwin.twins.glucose``).
"""

from __future__ import annotations

__all__ = ["DEFAULT_RULES"]

DEFAULT_RULES = """
[defaults]
# The care team has 5 minutes to acknowledge; then the ward's administrator is called.
escalation = [
  { to = "care-team", timeout_minutes = 5 },
  { to = "role:admin" },
]
# After a resolution the same rule stays quiet for the patient this long (alarm fatigue).
suppress_minutes = 15

[[rule]]
id = "news2-high"
title = "NEWS2 7 or more: emergency assessment"
priority = "high"
kind = "threshold"
source = "news2:score"
op = ">="
value = 7
hysteresis = 1            # cleared at 5 or below
escalation = [
  { to = "care-team", timeout_minutes = 2 },
  { to = "role:admin" },
]

[[rule]]
id = "news2-medium"
title = "NEWS2 5-6: urgent ward review"
priority = "medium"
kind = "band"
source = "news2:band"
equals = ["medium"]

[[rule]]
id = "news2-single-3"
title = "A single NEWS2 parameter scores 3"
priority = "medium"
kind = "threshold"
source = [
  "news2.respiration_rate:points",
  "news2.spo2:points",
  "news2.air_or_oxygen:points",
  "news2.systolic_bp:points",
  "news2.pulse:points",
  "news2.consciousness:points",
  "news2.temperature:points",
]
op = ">="
value = 3

[[rule]]
id = "qsofa-positive"
title = "qSOFA 2 or more: suspected sepsis"
priority = "high"
kind = "threshold"
source = "qsofa:score"
op = ">="
value = 2

[[rule]]
id = "glucose-forecast-low"
title = "Glucose predicted below 70 mg/dL within 30 minutes"
priority = "high"
kind = "forecast"
module = "glucose.forecast"  # the glucose twins' forecast (median CGM reading, mg/dL)
points = [
  { minutes = 30, output = "median_30" },
  { minutes = 60, output = "median_60" },
]
op = "<"
value = 70
within_minutes = 30
hysteresis = 10
"""
