"""Export a provenance tree as FHIR R4 Provenance resources and as W3C PROV-JSON.

The input is the tree of :meth:`medtwin.data.provenance.ProvenanceStore.tree`: a
result node with its inputs (nested results, observations with the message they
came in, twin attributes, or missing records). The same result or observation
can sit under several parents; both exports list it once.

:func:`to_fhir` gives a Bundle (type ``collection``) with one Provenance per
result (target: the derived value, agent: the module as software, entities: its
inputs) and one per observation (target: the observation, agent: its sender,
entity: the source message). :func:`to_prov_json` gives a PROV-JSON document
(https://www.w3.org/submissions/prov-json/) with entities for results,
observations and messages, an activity per computation and an agent per module
version.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

__all__ = [
    "ACTIVITY_SYSTEM",
    "ATTRIBUTE_SYSTEM",
    "DERIVED_SYSTEM",
    "MESSAGE_SYSTEM_PREFIX",
    "MISSING_EXTENSION",
    "MODULE_SYSTEM",
    "OBSERVATION_SYSTEM",
    "PARTICIPANT_SYSTEM",
    "SOURCE_SYSTEM",
    "TRUNCATED_EXTENSION",
    "message_system",
    "to_fhir",
    "to_prov_json",
]

Node = dict[str, Any]

DERIVED_SYSTEM = "urn:medtwin:derived"
OBSERVATION_SYSTEM = "urn:medtwin:observation"
WAVEFORM_SYSTEM = "urn:medtwin:waveform"
ATTRIBUTE_SYSTEM = "urn:medtwin:attribute"
MODULE_SYSTEM = "urn:medtwin:module"
SOURCE_SYSTEM = "urn:medtwin:source"
MESSAGE_SYSTEM_PREFIX = "urn:medtwin:message:"
# The R4 (4.0.1) defining URL of the W3C PROV activity codes: R4 publishes this code
# system under hl7.org/fhir, not terminology.hl7.org.
ACTIVITY_SYSTEM = "http://hl7.org/fhir/w3c-provenance-activity-type"
PARTICIPANT_SYSTEM = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
TRUNCATED_EXTENSION = "urn:medtwin:extension:provenance-truncated"
MISSING_EXTENSION = "urn:medtwin:extension:provenance-missing"

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# Deterministic fullUrls: the same tree exports to the same bundle.
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medtwin:provenance")

_DERIVATION = {"system": ACTIVITY_SYSTEM, "code": "Derivation", "display": "wasDerivedFrom"}
_ASSEMBLER = {"system": PARTICIPANT_SYSTEM, "code": "assembler", "display": "Assembler"}
_AUTHOR = {"system": PARTICIPANT_SYSTEM, "code": "author", "display": "Author"}


def message_system(channel: str) -> str:
    """The identifier system of a channel's messages: ``urn:medtwin:message:<channel>``."""
    return MESSAGE_SYSTEM_PREFIX + quote(channel, safe="")


# -- the walk ---------------------------------------------------------------------


@dataclass
class _Nodes:
    """The distinct nodes of a tree, in first-seen (pre-order) order."""

    results: dict[str, Node] = field(default_factory=dict)
    observations: dict[str, Node] = field(default_factory=dict)


def _collect(tree: Node) -> _Nodes:
    """Every distinct result and (present) observation of ``tree``, by id.

    Iterative, so a deep tree cannot hit the recursion limit. A result seen once
    truncated and once expanded (the depth limit cuts one path but not a shorter
    one) keeps its first expanded occurrence.
    """
    nodes = _Nodes()
    stack = [tree]
    while stack:
        node = stack.pop()
        if node.get("missing"):
            continue
        kind = node.get("type")
        if kind == "observation":
            nodes.observations.setdefault(node["id"], node)
        elif kind == "result":
            held = nodes.results.get(node["id"])
            if held is None or ("inputs" in node and "inputs" not in held):
                nodes.results[node["id"]] = node
            stack.extend(reversed(_used(node)))
    return nodes


def _used(node: Node) -> list[Node]:
    """The inputs a result used: readings held back as suspected artifacts were not."""
    return [child for child in node.get("inputs", []) if not child.get("excluded")]


def _text(value: Any) -> str | None:
    """``value`` as a FHIR string, or None where FHIR allows no such string.

    FHIR strings must hold a non-whitespace character; an element that would be
    empty is left out instead.
    """
    if value is None:
        return None
    text = str(value)
    return text if text.strip() else None


def _attribute_value(node: Node) -> str:
    """An attribute input as ``<input>=<value>`` (an unset value gives ``<input>=``)."""
    value = node.get("value")
    return f"{node.get('input', '')}={'' if value is None else value}"


# -- FHIR -------------------------------------------------------------------------


def to_fhir(tree: Node) -> dict[str, Any]:
    """A FHIR R4 Bundle (``collection``) of Provenance resources for ``tree``.

    One Provenance per distinct result (results first, in tree order) and one per
    distinct observation that is present; missing records get none, and are
    marked on the entity that names them.
    """
    nodes = _collect(tree)
    resources = [_result_provenance(n) for n in nodes.results.values()]
    resources += [_observation_provenance(n) for n in nodes.observations.values()]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid5(_UUID_NAMESPACE, 'Provenance/' + r['id'])}",
                "resource": r,
            }
            for r in resources
        ],
    }


def _fhir_id(prefix: str, key: str) -> str:
    """A FHIR resource id for ``key``: ``<prefix>-<key>`` if valid, else a hash of ``key``."""
    candidate = f"{prefix}-{key}"
    if _FHIR_ID.fullmatch(candidate):
        return candidate
    return f"{prefix}-h" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def _identifier(system: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"system": system}
    text = _text(value)
    if text is not None:
        out["value"] = text
    return out


def _reference(system: str, value: Any, display: Any = None) -> dict[str, Any]:
    """A logical reference (by identifier): the exports name records, not FHIR resources."""
    out: dict[str, Any] = {"identifier": _identifier(system, value)}
    text = _text(display)
    if text is not None:
        out["display"] = text
    return out


def _flag(url: str) -> dict[str, Any]:
    return {"url": url, "valueBoolean": True}


def _result_provenance(node: Node) -> dict[str, Any]:
    name, version = str(node["module"]), str(node["version"])
    device = _reference(MODULE_SYSTEM, f"{name}|{version}", f"{name} v{version}")
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": _fhir_id("derived", str(node["id"])),
        "target": [_reference(DERIVED_SYSTEM, node["id"], name)],
        "recorded": node["computed"],
        "activity": {"coding": [_DERIVATION]},
        "agent": [{"type": {"coding": [_ASSEMBLER]}, "who": {"type": "Device", **device}}],
    }
    if node.get("truncated"):
        # The depth limit cut this result's inputs: say so rather than imply it had none.
        resource["extension"] = [_flag(TRUNCATED_EXTENSION)]
    entities = [_entity(child) for child in _used(node)]
    if entities:
        resource["entity"] = entities
    return resource


def _entity(child: Node) -> dict[str, Any]:
    """One input of a result as a Provenance entity; ``what.display`` is the input name."""
    kind = child.get("type")
    if kind == "observation":
        what = _reference(OBSERVATION_SYSTEM, child["id"], child.get("input"))
    elif kind == "waveform":
        what = _reference(WAVEFORM_SYSTEM, child["id"], child.get("input"))
    elif kind == "result":
        what = _reference(DERIVED_SYSTEM, child["id"], child.get("input"))
    else:
        what = _reference(ATTRIBUTE_SYSTEM, _attribute_value(child), child.get("input"))
    entity: dict[str, Any] = {"role": "source", "what": what}
    if child.get("missing"):
        # The record is gone (erased or never stored): no Provenance of its own follows.
        entity["extension"] = [_flag(MISSING_EXTENSION)]
    return entity


def _observation_provenance(node: Node) -> dict[str, Any]:
    source = node.get("source")
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": _fhir_id("observation", str(node["id"])),
        "target": [_reference(OBSERVATION_SYSTEM, node["id"], node.get("code"))],
        "recorded": node["received"],
        # Derivation (wasDerivedFrom): ingestion parses, validates and normalises the
        # message item into the stored observation; it is neither a verbatim copy
        # (Quotation) nor produced from nothing (Generation). It matches the
        # wasDerivedFrom (prov:PrimarySource) relation of the PROV-JSON export.
        "activity": {"coding": [_DERIVATION]},
        # R4 requires an agent: the sender that originated the observation.
        "agent": [
            {"type": {"coding": [_AUTHOR]}, "who": _reference(SOURCE_SYSTEM, source, source)}
        ],
    }
    origin = node.get("origin")
    if origin is not None:
        message = _reference(
            message_system(str(origin["channel"])), origin["message"], origin.get("entry")
        )
        resource["entity"] = [{"role": "source", "what": message}]
    return resource


# -- PROV-JSON --------------------------------------------------------------------


def _local(*parts: Any) -> str:
    """A ``medtwin:`` qualified name from path parts, each percent-encoded.

    Percent-encoding keeps only letters, digits and ``_ . - ~``, so ``|``, ``/``,
    ``:``, ``=`` and spaces in a part never clash with the ``/`` between parts. A
    final ``.`` is encoded too: PROV-N local names may not end with one.
    """
    local = "/".join(quote(str(part), safe="") for part in parts)
    if local.endswith("."):
        local = local[:-1] + "%2E"
    return f"medtwin:{local}"


def _qname(value: str) -> dict[str, str]:
    """A qualified-name attribute value (``prov:type`` of a record)."""
    return {"$": value, "type": "prov:QUALIFIED_NAME"}


def _literal(value: Any) -> Any:
    """A PROV-JSON attribute value: JSON strings, numbers and booleans stand for themselves."""
    if isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass
class _ProvDocument:
    """A PROV-JSON document being built, with a counter per blank-node kind."""

    records: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "entity": {},
            "activity": {},
            "agent": {},
            "wasGeneratedBy": {},
            "used": {},
            "wasDerivedFrom": {},
            "wasAssociatedWith": {},
        }
    )
    counts: dict[str, int] = field(default_factory=dict)

    def element(self, kind: str, identifier: str, attributes: dict[str, Any]) -> None:
        """Add an element unless one with this id is there (the first one is kept)."""
        self.records[kind].setdefault(identifier, attributes)

    def relation(self, kind: str, short: str, attributes: dict[str, Any]) -> str:
        """Add a relation under a fresh blank node ``_:<short><n>``; return that id."""
        n = self.counts[short] = self.counts.get(short, 0) + 1
        identifier = f"_:{short}{n}"
        self.records[kind][identifier] = attributes
        return identifier


def to_prov_json(tree: Node) -> dict[str, Any]:
    """A W3C PROV-JSON document for ``tree`` (prefix ``medtwin`` = ``urn:medtwin:``).

    Entities: ``medtwin:derived/<fp>`` per result, ``medtwin:observation/<id>``
    per observation, ``medtwin:message/<channel>/<message>`` per source message,
    ``medtwin:attribute/<input>=<value>`` per attribute. Activities:
    ``medtwin:run/<fp>`` per computation. Agents: ``medtwin:module/<name>/<version>``.
    Null outputs are left out: PROV has no null literal.
    """
    nodes = _collect(tree)
    doc = _ProvDocument()
    for node in nodes.results.values():
        _prov_result(doc, node)
    for node in nodes.observations.values():
        _prov_observation(doc, node)
    return {"prefix": {"medtwin": "urn:medtwin:"}, **doc.records}


def _prov_result(doc: _ProvDocument, node: Node) -> None:
    fp = str(node["id"])
    entity, run = _local("derived", fp), _local("run", fp)
    agent = _local("module", node["module"], node["version"])
    attributes: dict[str, Any] = {
        "prov:type": _qname("medtwin:DerivedValue"),
        "medtwin:module": str(node["module"]),
        "medtwin:version": str(node["version"]),
        "medtwin:fingerprint": fp,
        "medtwin:patient": str(node["patient"]),
        "medtwin:parameters": _literal(node.get("parameters", {})),
    }
    for name, value in node.get("outputs", {}).items():
        if value is not None:
            attributes[_local(f"output_{name}")] = _literal(value)
    if node.get("truncated"):
        attributes["medtwin:truncated"] = True
    # Set, not setdefault: an input met earlier may have named this result as missing.
    doc.records["entity"][entity] = attributes
    doc.element(
        "activity",
        run,
        {
            "prov:startTime": node["computed"],
            "prov:endTime": node["computed"],
            "prov:type": _qname("medtwin:Computation"),
        },
    )
    doc.element(
        "agent",
        agent,
        {
            "prov:type": _qname("prov:SoftwareAgent"),
            "medtwin:module": str(node["module"]),
            "medtwin:version": str(node["version"]),
        },
    )
    generation = doc.relation(
        "wasGeneratedBy",
        "gen",
        {"prov:entity": entity, "prov:activity": run, "prov:time": node["computed"]},
    )
    doc.relation("wasAssociatedWith", "assoc", {"prov:activity": run, "prov:agent": agent})
    for child in _used(node):
        used = _prov_input(doc, child)
        usage_attributes: dict[str, Any] = {"prov:activity": run, "prov:entity": used}
        if child.get("input"):
            usage_attributes["prov:role"] = str(child["input"])
        usage = doc.relation("used", "use", usage_attributes)
        doc.relation(
            "wasDerivedFrom",
            "der",
            {
                "prov:generatedEntity": entity,
                "prov:usedEntity": used,
                "prov:activity": run,
                "prov:generation": generation,
                "prov:usage": usage,
            },
        )


def _prov_input(doc: _ProvDocument, child: Node) -> str:
    """The entity id of a result's input; a missing or attribute input is added here."""
    kind = child.get("type")
    if kind == "observation":
        identifier = _local("observation", child["id"])
        if child.get("missing"):
            doc.element(
                "entity",
                identifier,
                {"prov:type": _qname("medtwin:Observation"), "medtwin:missing": True},
            )
        return identifier
    if kind == "waveform":
        identifier = _local("waveform", child["id"])
        chunk: dict[str, Any] = {"prov:type": _qname("medtwin:Waveform")}
        for key in ("kind", "code", "unit", "start", "end", "rate_hz", "n_samples"):
            if child.get(key) is not None:
                chunk[f"medtwin:{key}"] = _literal(child[key])
        if child.get("missing"):
            chunk["medtwin:missing"] = True
        doc.element("entity", identifier, chunk)
        return identifier
    if kind == "result":
        identifier = _local("derived", child["id"])
        if child.get("missing"):
            doc.element(
                "entity",
                identifier,
                {"prov:type": _qname("medtwin:DerivedValue"), "medtwin:missing": True},
            )
        return identifier
    value = _attribute_value(child)
    identifier = _local("attribute", value)
    attributes: dict[str, Any] = {
        "prov:type": _qname("medtwin:Attribute"),
        "medtwin:name": str(child.get("input", "")),
    }
    if child.get("value") is not None:
        attributes["prov:value"] = str(child["value"])
    doc.element("entity", identifier, attributes)
    return identifier


def _prov_observation(doc: _ProvDocument, node: Node) -> None:
    identifier = _local("observation", node["id"])
    attributes: dict[str, Any] = {"prov:type": _qname("medtwin:Observation")}
    for key in ("source", "source_id", "version", "patient", "system", "code"):
        if node.get(key) is not None:
            attributes[f"medtwin:{key}"] = _literal(node[key])
    if node.get("value") is not None:
        attributes["prov:value"] = _literal(node["value"])
    for key in ("unit", "time", "status", "received"):
        if node.get(key) is not None:
            attributes[f"medtwin:{key}"] = _literal(node[key])
    # A missing occurrence may have been added first; the full record replaces it.
    doc.records["entity"][identifier] = attributes
    origin = node.get("origin")
    if origin is None:
        return
    channel, message = str(origin["channel"]), str(origin["message"])
    source = _local("message", channel, message)
    doc.element(
        "entity",
        source,
        {
            "prov:type": _qname("medtwin:Message"),
            "medtwin:channel": channel,
            "medtwin:message": message,
        },
    )
    derivation: dict[str, Any] = {
        "prov:generatedEntity": identifier,
        "prov:usedEntity": source,
        # The message is the observation's primary source (FHIR entity role "source").
        "prov:type": _qname("prov:PrimarySource"),
    }
    if origin.get("entry") is not None:
        derivation["medtwin:entry"] = str(origin["entry"])
    doc.relation("wasDerivedFrom", "der", derivation)
