"""MQTT devices: readings from bedside and wearable devices over a Mosquitto broker.

- :mod:`~medtwin.devices.mqtt.payload`: topic and JSON payload into a reading;
- :mod:`~medtwin.devices.mqtt.bindings`: which patient a device was on, and when;
- :mod:`~medtwin.devices.mqtt.subscriber`: the broker connection and the ingestion;
- :mod:`~medtwin.devices.mqtt.replay`: replay of quarantined messages (``mqtt`` replayer);
- :mod:`~medtwin.devices.mqtt.provisioning`: per-device credentials and ACLs for Mosquitto;
- :mod:`~medtwin.devices.mqtt.loadgen`: publishing readings at volume (tests, benchmark).
"""

from __future__ import annotations

from medtwin.devices.mqtt.bindings import Binding, BindingIndex, DeviceBindings
from medtwin.devices.mqtt.payload import (
    DeviceIntervention,
    DeviceObservation,
    PayloadRejection,
    parse_message,
)
from medtwin.devices.mqtt.replay import MqttReplayer, replayer
from medtwin.devices.mqtt.subscriber import (
    MqttConfig,
    MqttError,
    MqttSubscriber,
    SubscriberStats,
    tls_context,
)

__all__ = [
    "Binding",
    "BindingIndex",
    "DeviceBindings",
    "DeviceIntervention",
    "DeviceObservation",
    "MqttConfig",
    "MqttError",
    "MqttReplayer",
    "MqttSubscriber",
    "PayloadRejection",
    "SubscriberStats",
    "parse_message",
    "replayer",
    "tls_context",
]
