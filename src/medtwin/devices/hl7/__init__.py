"""HL7 v2 over MLLP: ORU^R01 results and ADT patient events in, acknowledgements out.

::

    TCP/TLS ──mllp.MllpServer── frames (all connections, one queue)
      │ peer not allowed / idle / slow       │ waiting frames handed over together
      │ frame too large ──> AR, kept open    ▼
      ▼                          processor.HL7Processor.handle_batch (worker thread)
    connection closed                        ├─ parse.parse_message: own splitter with
                                             │    MSH-1/MSH-2, fields cut when read
                                             │    -> InputError(reason, "MSH-2"), AR
                                             ├─ header: sender not allowed, version,
                                             │    processing id, type/event -> AR (+quarantine)
                                             ├─ oru.read_oru / adt.read_adt
                                             │    bad OBX -> Fault("OBX[3]-5")
                                             ├─ local codes -> code_mappings (per sender)
                                             ├─ Ingestor.prepare -> validation faults
                                             │    mapped to OBX fields
                                             ├─ Ingestor.commit(extra=log hook): stored,
                                             │    quarantined, resend check and the
                                             │    hl7_messages row in ONE transaction
                                             │    (ORU groups: one transaction for all)
                                             ├─ StoreError -> AR / CE (send again)
                                             └─ ack.build_ack: AA | AE + ERR per fault
                                                  (CA/CE/CR in enhanced mode)

Every fault the sender can cause ends as an acknowledgement (or, on the socket,
a clean close); nothing raises out of the listener. Logs carry control ids,
counts and codes, never patient data. :class:`~medtwin.devices.hl7.coordinator.MllpCoordinator`
owns the listener and turns bind and TLS failures into ``ConfigurationError``.
:func:`replayer` is the ``mllp`` replayer of the quarantine (``medtwin quarantine replay``).
"""

from medtwin.devices.hl7.ack import AckCode, Fault, build_ack
from medtwin.devices.hl7.coordinator import MllpCoordinator, mllp_ssl_context
from medtwin.devices.hl7.mllp import MllpServer, frame, send_messages
from medtwin.devices.hl7.parse import ParsedMessage, parse_message
from medtwin.devices.hl7.processor import CHANNEL, HL7Processor, Outcome, replayer

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
    "replayer",
    "send_messages",
]
