"""Alarms over module outputs: rules (configuration), the engine (lifecycle), outbound channels.

See :mod:`medtwin.twins.alarms.rules` for the rule format and
:mod:`medtwin.twins.alarms.engine` for the state machine.
"""

from __future__ import annotations

from medtwin.twins.alarms.engine import SYSTEM, Actor, Alarm, AlarmEngine, Suppression
from medtwin.twins.alarms.outbound import MqttSink, Outbound, WebhookSink
from medtwin.twins.alarms.rules import AlarmConfigError, RuleSet, load_rules, parse_rules

__all__ = [
    "SYSTEM",
    "Actor",
    "Alarm",
    "AlarmConfigError",
    "AlarmEngine",
    "MqttSink",
    "Outbound",
    "RuleSet",
    "Suppression",
    "WebhookSink",
    "load_rules",
    "parse_rules",
]
