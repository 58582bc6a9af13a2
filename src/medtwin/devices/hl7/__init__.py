"""HL7 v2 over MLLP: ORU^R01 results and ADT patient events in, acknowledgements out.

::

    TCP/TLS ──mllp.MllpServer── frame ──> processor.HL7Processor.handle (worker thread)
      │ peer not allowed / idle / slow       │
      │ frame too large ──> AR, kept open    ├─ parse.parse_message   python-hl7 errors
      ▼                                      │    -> InputError(reason, "MSH-2")
    connection closed                        │    -> whole message quarantined, AR
                                             ├─ header: sender not allowed, version,
                                             │    processing id, type/event -> AR (+quarantine)
                                             ├─ hl7_messages: identical resend -> same ack
                                             ├─ oru.read_oru / adt.read_adt
                                             │    bad OBX -> Fault("OBX[3]-5")
                                             ├─ Ingestor.prepare -> validation faults
                                             │    mapped to OBX fields
                                             ├─ Ingestor.commit: stored + quarantined
                                             │    in ONE transaction
                                             ├─ StoreError -> AR / CE (send again)
                                             └─ ack.build_ack: AA | AE + ERR per fault
                                                  (CA/CE/CR in enhanced mode)

Every fault the sender can cause ends as an acknowledgement (or, on the socket,
a clean close); nothing raises out of the listener. Logs carry control ids and
counts, never patient data. :class:`~medtwin.devices.hl7.coordinator.MllpCoordinator`
owns the listener and turns bind and TLS failures into ``ConfigurationError``.
"""

from medtwin.devices.hl7.ack import AckCode, Fault, build_ack
from medtwin.devices.hl7.coordinator import MllpCoordinator, mllp_ssl_context
from medtwin.devices.hl7.mllp import MllpServer, frame, send_messages
from medtwin.devices.hl7.parse import ParsedMessage, parse_message
from medtwin.devices.hl7.processor import CHANNEL, HL7Processor, Outcome

__all__ = [
    "CHANNEL",
    "AckCode",
    "Fault",
    "HL7Processor",
    "MllpCoordinator",
    "MllpServer",
    "Outcome",
    "ParsedMessage",
    "build_ack",
    "frame",
    "mllp_ssl_context",
    "parse_message",
    "send_messages",
]
