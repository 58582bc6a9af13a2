"""Patient consent: FHIR R4 Consent resources, parsed into rules and enforced on every read.

A Consent is imported or created through the API (:meth:`ConsentStore.put`), kept
encrypted as received (the ``consents`` table's ``resource``, under the keyring,
bound to ``consents:<id>``) next to its parsed rules (``rules``, JSON), and
checked by :func:`decide` before any read or export of the patient's data.

Reading a Consent (:func:`parse_consent`)
-----------------------------------------

* The root ``provision`` is the consent's own decision: its ``type`` applies to
  every request the root matches. Nested provisions are exceptions: when one
  matches it overrides its parent.
* R4 leaves ``type`` optional. An untyped *root* withholds (``deny``): in R4 the
  root is an exception to the base policy, and medtwin's base policy already
  permits (implied consent for care, opt-out for research), so the only
  exception left is a removal. This is also how the official "withhold"
  examples (``notThem``, ``notTime``, ``notAuthor``, ``notThis``, ``Out``) read.
  An untyped *nested* provision is the opposite of its parent. Inferred types
  carry ``explicit=False``.
* A consent without any provision is its ``policyRule`` alone: ``OPTOUT`` or
  ``OPTOUTE`` deny everything in scope, ``OPTIN`` or ``OPTINR`` permit it; any
  other policy leaves the consent without rules.
* Conditions kept: ``period`` (when the rule is in force; a date-only bound covers
  its whole day, UTC), actors (references, with their role code), purposes
  (``purpose`` codes), actions (``action`` codes). Data qualifiers are kept too,
  but medtwin releases a patient's record as a whole and cannot tell which part
  they name: ``class``, ``code``, ``data``, ``securityLabel``, ``dataPeriod``, and
  actors in a data-origin role (custodian ``CST``, author ``AUT``, ...). They fail
  closed (below).

Deciding (:func:`decide`)
-------------------------

1. Only consents of the request's patient with status ``active`` apply. Of those,
   only consents whose scope concerns the purpose: ``patient-privacy``
   (``privacy``), ``adr`` and unknown scopes concern every purpose; ``research``
   only research; ``treatment`` treatment and emergency treatment.
2. A provision matches a request when all of its conditions hold:

   * the request time lies in its ``period`` (bounds included), if it has one;
   * the requester is one of its recipient actors, if it names any. A medtwin
     user is known by its name, as ``Practitioner/<name>`` (or the reference
     given as the actor) and as ``Role/<role>`` (``Role/clinician``...);
   * the purpose is among its purposes, if it names any. medtwin purposes are v3
     ActReason codes: treatment ``TREAT``; emergency ``ETREAT`` (a kind of
     ``TREAT``, so it also matches ``TREAT``); research ``HRESCH``, ``RESCH`` or
     ``CLINTRCH``;
   * the action is among its actions, if it names any. A *deny* of ``access``,
     ``use`` or ``disclose`` covers what involves it (read: access, use; export:
     access, use, disclose); a *permit* grants only what it names (read: access
     or use; export: disclose);
   * fail closed on data qualifiers: a deny with data qualifiers matches (the
     whole record is withheld); a permit with data qualifiers never matches (it
     cannot be shown to cover the record).

   Nested provisions are looked at only when their parent matches; the deepest
   match decides, and of matching sibling exceptions a deny wins.
3. Across consents a deny wins (deny overrides); else a permit of a consent.
4. With no applicable consent, or none that matches: permit. Care runs on implied
   consent; research runs on an opt-out model (a patient is in research until an
   active consent denies it), see :meth:`ConsentStore.research_opt_outs`.

Emergency (break-glass): a deny stops emergency access only when the patient
refused it in so many words: the deciding chain of provisions holds an
*explicit* ``type: deny`` that lists ``ETREAT`` among its own purposes. Any other
deny (generic, time- or actor-bound, or inferred) is overridden: the decision
permits with ``overridden=True``, naming the consent overridden, so that the
caller audits it with high priority. Emergency care must not fail on a consent
that never spoke about emergencies; a patient who did is obeyed.

To lift a deny, set its consent inactive (or put the same id again); several
active consents are all enforced.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import Connection

from medtwin.core.clock import to_us
from medtwin.core.errors import ConflictError, InputError, NotFoundError
from medtwin.data.crypto import Keyring
from medtwin.data.store import SqlStore, schema
from medtwin.data.validation import ID_PATTERN

ProvisionType = Literal["permit", "deny"]
Purpose = Literal["treatment", "research", "emergency"]
Action = Literal["read", "export"]

STATUSES = frozenset({"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"})
"""FHIR R4 Consent statuses; only ``active`` consents are enforced."""

SCOPES_FOR_ALL = frozenset({"patient-privacy", "privacy", "adr"})
PURPOSE_CODES: dict[str, frozenset[str]] = {
    "treatment": frozenset({"TREAT"}),
    "emergency": frozenset({"ETREAT", "TREAT"}),
    "research": frozenset({"HRESCH", "RESCH", "CLINTRCH"}),
}
"""The v3 ActReason codes a provision's purposes must name to match a medtwin purpose."""
EMERGENCY_CODE = "ETREAT"
ACTIONS_INVOLVED: dict[str, frozenset[str]] = {
    "read": frozenset({"access", "use"}),
    "export": frozenset({"access", "use", "disclose"}),
}
"""Consent actions a medtwin action involves: a deny of any of them covers it."""
ACTIONS_GRANTING: dict[str, frozenset[str]] = {
    "read": frozenset({"access", "use"}),
    "export": frozenset({"disclose"}),
}
"""Consent actions of which a permit must name one to grant a medtwin action."""
DATA_ROLES = frozenset({"AUT", "AUTHEN", "CST", "ENT", "INF", "LA"})
"""v3 ParticipationType codes naming where data comes from, not who receives it."""

MAX_DEPTH = 32
RULES_VERSION = 1

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_DATE_TIME = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<time>\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?)(?P<tz>Z|[+-]\d{2}:\d{2}))?)?)?"
)
_POLICY_DEFAULTS: dict[str, ProvisionType] = {
    "OPTIN": "permit",
    "OPTINR": "permit",
    "OPTOUT": "deny",
    "OPTOUTE": "deny",
}


# ---------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActorRef:
    """An actor of a provision: a reference (``Practitioner/f204``, ``Role/researcher``)."""

    reference: str
    role: str | None = None  # v3 ParticipationType code, e.g. PRCP, CST

    @property
    def names_data(self) -> bool:
        """Whether the actor tells where data comes from (custodian, author...)."""
        return self.role in DATA_ROLES


@dataclass(frozen=True, slots=True)
class Provision:
    """A rule of a consent; nested provisions are exceptions to it."""

    type: ProvisionType
    explicit: bool = True  # False: the type was inferred (see the module docstring)
    period_start_us: int | None = None
    period_end_us: int | None = None  # inclusive
    actors: tuple[ActorRef, ...] = ()
    purposes: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()
    data: tuple[str, ...] = ()
    security_labels: tuple[str, ...] = ()
    data_period_start_us: int | None = None
    data_period_end_us: int | None = None
    provisions: tuple[Provision, ...] = ()

    @property
    def names_data(self) -> bool:
        """Whether the rule is limited to part of the record (which medtwin cannot tell)."""
        return bool(
            self.classes
            or self.codes
            or self.data
            or self.security_labels
            or self.data_period_start_us is not None
            or self.data_period_end_us is not None
            or any(actor.names_data for actor in self.actors)
        )


@dataclass(frozen=True, slots=True)
class ConsentRules:
    """What medtwin enforces of one Consent."""

    id: str  # "" when the resource has none (ConsentStore.put assigns one)
    patient: str  # the patient's id, without "Patient/"
    status: str
    scope: str
    date_time_us: int | None
    provision: Provision | None


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def parse_consent(resource: Any, *, location: str = "Consent") -> ConsentRules:
    """The rules of a FHIR R4 Consent; InputError naming the JSON path of any fault."""
    obj = _object(resource, location)
    if obj.get("resourceType") != "Consent":
        raise InputError("resourceType must be 'Consent'", f"{location}.resourceType")
    consent_id = ""
    if "id" in obj:
        consent_id = _text(obj["id"], f"{location}.id")
        if not _FHIR_ID.fullmatch(consent_id):
            raise InputError("not a FHIR id (1-64 of A-Z a-z 0-9 - .)", f"{location}.id")
    status = _text(obj.get("status"), f"{location}.status")
    if status not in STATUSES:
        raise InputError(f"unknown status {status!r}", f"{location}.status")
    scope = _scope(obj.get("scope"), f"{location}.scope")
    patient = _patient(obj.get("patient"), f"{location}.patient")
    date_time_us = None
    if obj.get("dateTime") is not None:
        date_time_us, _ = _instant_bounds(obj["dateTime"], f"{location}.dateTime")
    provision: Provision | None
    if obj.get("provision") is not None:
        provision = _provision(obj["provision"], f"{location}.provision", None, 0)
    else:
        provision = _policy_provision(obj.get("policyRule"), f"{location}.policyRule")
    return ConsentRules(consent_id, patient, status, scope, date_time_us, provision)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"must be a JSON object, got {_kind(value)}", where)
    return value


def _array(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InputError(f"must be a JSON array, got {_kind(value)}", where)
    return value


def _text(value: Any, where: str) -> str:
    if value is None:
        raise InputError("is required", where)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"must be a non-empty string, got {_kind(value)}", where)
    return value.strip()


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value.strip() else "an empty string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _codes_of_codings(codings: Any, where: str) -> list[str]:
    """The codes of a Coding array (codings without a code are skipped)."""
    codes: list[str] = []
    for i, coding in enumerate(_array(codings, where)):
        item = _object(coding, f"{where}[{i}]")
        if item.get("code") is not None:
            codes.append(_text(item["code"], f"{where}[{i}].code"))
    return codes


def _codes_of_concepts(concepts: Any, where: str) -> list[str]:
    """The codes of a CodeableConcept array."""
    codes: list[str] = []
    for i, concept in enumerate(_array(concepts, where)):
        item = _object(concept, f"{where}[{i}]")
        codes += _codes_of_codings(item.get("coding"), f"{where}[{i}].coding")
    return codes


def _scope(value: Any, where: str) -> str:
    if value is None:
        raise InputError("is required (e.g. patient-privacy, research, treatment, adr)", where)
    codes = _codes_of_codings(_object(value, where).get("coding"), f"{where}.coding")
    if not codes:
        raise InputError("has no coding with a code", where)
    known = [c for c in codes if c in SCOPES_FOR_ALL or c in ("research", "treatment")]
    return (known or codes)[0]


def _patient(value: Any, where: str) -> str:
    if value is None:
        raise InputError("is required (a reference to the Patient)", where)
    reference = _text(_object(value, where).get("reference"), f"{where}.reference")
    kind, _, patient = normalize_reference(reference).partition("/")
    if kind != "Patient" or not ID_PATTERN.fullmatch(patient):
        raise InputError(f"must be 'Patient/<id>', got {reference!r}", f"{where}.reference")
    return patient


def normalize_reference(reference: str) -> str:
    """``Type/id`` of a literal reference: base URL and ``/_history/..`` stripped."""
    text = reference.strip().split("/_history/", 1)[0].rstrip("/")
    if "://" in text:
        parts = text.split("/")
        text = "/".join(parts[-2:])
    if text.startswith("Role/"):
        text = "Role/" + text[5:].lower()
    return text


def _policy_provision(value: Any, where: str) -> Provision | None:
    if value is None:
        return None
    codes = _codes_of_codings(_object(value, where).get("coding"), f"{where}.coding")
    for code in codes:
        if code in _POLICY_DEFAULTS:
            return Provision(_POLICY_DEFAULTS[code], explicit=False)
    return None


def _provision(value: Any, where: str, parent: ProvisionType | None, depth: int) -> Provision:
    if depth >= MAX_DEPTH:
        raise InputError(f"provisions are nested deeper than {MAX_DEPTH}", where)
    obj = _object(value, where)
    explicit = obj.get("type") is not None
    kind: ProvisionType
    if explicit:
        written = obj["type"]
        if written not in ("permit", "deny"):
            raise InputError(f"must be 'permit' or 'deny', got {written!r}", f"{where}.type")
        kind = "permit" if written == "permit" else "deny"
    elif parent is None:
        kind = "deny"
    else:
        kind = "deny" if parent == "permit" else "permit"
    start, end = _period(obj.get("period"), f"{where}.period")
    data_start, data_end = _period(obj.get("dataPeriod"), f"{where}.dataPeriod")
    actors = tuple(
        _actor(actor, f"{where}.actor[{i}]")
        for i, actor in enumerate(_array(obj.get("actor"), f"{where}.actor"))
    )
    data: list[str] = []
    for i, item in enumerate(_array(obj.get("data"), f"{where}.data")):
        ref = _object(
            _object(item, f"{where}.data[{i}]").get("reference"), f"{where}.data[{i}].reference"
        )
        data.append(_text(ref.get("reference"), f"{where}.data[{i}].reference.reference"))
    children = tuple(
        _provision(child, f"{where}.provision[{i}]", kind, depth + 1)
        for i, child in enumerate(_array(obj.get("provision"), f"{where}.provision"))
    )
    return Provision(
        type=kind,
        explicit=explicit,
        period_start_us=start,
        period_end_us=end,
        actors=actors,
        purposes=tuple(_codes_of_codings(obj.get("purpose"), f"{where}.purpose")),
        actions=tuple(_codes_of_concepts(obj.get("action"), f"{where}.action")),
        classes=tuple(_codes_of_codings(obj.get("class"), f"{where}.class")),
        codes=tuple(_codes_of_concepts(obj.get("code"), f"{where}.code")),
        data=tuple(data),
        security_labels=tuple(
            _codes_of_codings(obj.get("securityLabel"), f"{where}.securityLabel")
        ),
        data_period_start_us=data_start,
        data_period_end_us=data_end,
        provisions=children,
    )


def _actor(value: Any, where: str) -> ActorRef:
    obj = _object(value, where)
    ref = _object(obj.get("reference"), f"{where}.reference")
    reference = normalize_reference(_text(ref.get("reference"), f"{where}.reference.reference"))
    role = None
    if obj.get("role") is not None:
        codes = _codes_of_concepts([obj["role"]], f"{where}.role")
        role = codes[0] if codes else None
    return ActorRef(reference, role)


def _period(value: Any, where: str) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    obj = _object(value, where)
    start = end = None
    if obj.get("start") is not None:
        start, _ = _instant_bounds(obj["start"], f"{where}.start")
    if obj.get("end") is not None:
        _, end = _instant_bounds(obj["end"], f"{where}.end")
    if start is not None and end is not None and start > end:
        raise InputError("start is after end", where)
    return start, end


def _instant_bounds(value: Any, where: str) -> tuple[int, int]:
    """First and last microsecond a FHIR date or dateTime covers (a date: its whole day, UTC)."""
    text = _text(value, where)
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise InputError(
            f"not a FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD or "
            f"YYYY-MM-DDThh:mm:ss with Z or +hh:mm), got {text!r}",
            where,
        )
    year, month, day = int(match["y"]), int(match["m"] or 1), int(match["d"] or 1)
    try:
        if match["time"] is not None:
            moment = datetime.fromisoformat(f"{text[:10]}T{match['time']}{match['tz']}")
            instant = to_us(moment)
            return instant, instant
        first = datetime(year, month, day, tzinfo=UTC)
        if match["d"] is not None:
            after = first + timedelta(days=1)
        elif match["m"] is not None:
            after = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        else:
            after = datetime(year + 1, 1, 1, tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InputError(f"not a valid date: {exc}", where) from None
    return to_us(first), to_us(after) - 1


# ---------------------------------------------------------------------------
# Deciding
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """A read or export of one patient's data, as the consent check sees it."""

    patient: str
    actor: str  # the user name, or a reference such as "Practitioner/f204"
    role: str  # the medtwin role: clinician, researcher, device, admin
    purpose: Purpose
    action: Action
    at_us: int

    def __post_init__(self) -> None:
        if self.purpose not in PURPOSE_CODES:
            raise ValueError(f"unknown purpose {self.purpose!r}")
        if self.action not in ACTIONS_INVOLVED:
            raise ValueError(f"unknown action {self.action!r}")

    def identities(self) -> frozenset[str]:
        """The references the requester answers to."""
        names = {f"Role/{self.role.lower()}"}
        actor = self.actor.strip()
        if actor:
            names.add(normalize_reference(actor) if "/" in actor else actor)
            if "/" not in actor:
                names.add(f"Practitioner/{actor}")
        return frozenset(names)


@dataclass(frozen=True, slots=True)
class Decision:
    permitted: bool
    reason: str
    consent_id: str | None
    overridden: bool = False  # an emergency request that overrode a deny (audit it)


Chain = tuple[Provision, ...]


def decide(consents: Sequence[ConsentRules], request: Request) -> Decision:
    """Whether the patient's consents allow ``request``; see the module docstring."""
    identities = request.identities()
    denies: list[tuple[ConsentRules, list[Chain]]] = []
    permit: ConsentRules | None = None
    for consent in consents:
        if (
            consent.status != "active"
            or consent.patient != request.patient
            or consent.provision is None
            or not scope_concerns(consent.scope, request.purpose)
        ):
            continue
        chains = _evaluate(consent.provision, request, identities, ())
        if not chains:
            continue
        if chains[0][-1].type == "deny":
            denies.append((consent, chains))
        elif permit is None:
            permit = consent
    if denies:
        consent = denies[0][0]
        if request.purpose != "emergency":
            return Decision(False, f"denied by consent {consent.id}", consent.id)
        for refusing, chains in denies:
            if any(_refuses_emergency(chain) for chain in chains):
                return Decision(
                    False,
                    f"consent {refusing.id} refuses access even in an emergency (ETREAT)",
                    refusing.id,
                )
        return Decision(
            True,
            f"emergency access overrides consent {consent.id}, which denies it",
            consent.id,
            overridden=True,
        )
    if permit is not None:
        return Decision(True, f"permitted by consent {permit.id}", permit.id)
    if request.purpose == "research":
        return Decision(True, "no consent applies: research is opt-out", None)
    return Decision(True, "no consent applies: implied consent for care", None)


def scope_concerns(scope: str, purpose: str) -> bool:
    """Whether a consent of ``scope`` governs requests for ``purpose``."""
    if scope == "research":
        return purpose == "research"
    if scope == "treatment":
        return purpose in ("treatment", "emergency")
    return True  # privacy, adr and scopes medtwin does not know


def _evaluate(
    provision: Provision, request: Request, identities: frozenset[str], above: Chain
) -> list[Chain]:
    """The deciding chains (root to the deepest match) under ``provision``, all of one type."""
    if not matches(provision, request, identities):
        return []
    chain = (*above, provision)
    found = [
        c for child in provision.provisions for c in _evaluate(child, request, identities, chain)
    ]
    if not found:
        return [chain]
    denying = [c for c in found if c[-1].type == "deny"]
    return denying or found


def matches(
    provision: Provision, request: Request, identities: frozenset[str] | None = None
) -> bool:
    """Whether ``provision``'s own conditions hold for ``request`` (nested ones aside)."""
    if provision.period_start_us is not None and request.at_us < provision.period_start_us:
        return False
    if provision.period_end_us is not None and request.at_us > provision.period_end_us:
        return False
    if provision.type == "permit" and provision.names_data:
        return False  # cannot be shown to cover the record: fail closed
    recipients = [a.reference for a in provision.actors if not a.names_data]
    if recipients:
        names = request.identities() if identities is None else identities
        if not names.intersection(recipients):
            return False
    if provision.purposes and PURPOSE_CODES[request.purpose].isdisjoint(provision.purposes):
        return False
    if provision.actions:
        table = ACTIONS_GRANTING if provision.type == "permit" else ACTIONS_INVOLVED
        if table[request.action].isdisjoint(provision.actions):
            return False
    return True


def _refuses_emergency(chain: Chain) -> bool:
    return chain[-1].type == "deny" and any(
        p.explicit and p.type == "deny" and EMERGENCY_CODE in p.purposes for p in chain
    )


# ---------------------------------------------------------------------------
# Rules as JSON (the consents table's ``rules`` column)
# ---------------------------------------------------------------------------


def rules_to_json(rules: ConsentRules) -> str:
    body = {
        "v": RULES_VERSION,
        "id": rules.id,
        "patient": rules.patient,
        "status": rules.status,
        "scope": rules.scope,
        "date_time_us": rules.date_time_us,
        "provision": None if rules.provision is None else _provision_json(rules.provision),
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def _provision_json(p: Provision) -> dict[str, Any]:
    return {
        "type": p.type,
        "explicit": p.explicit,
        "period": [p.period_start_us, p.period_end_us],
        "actors": [[a.reference, a.role] for a in p.actors],
        "purposes": list(p.purposes),
        "actions": list(p.actions),
        "classes": list(p.classes),
        "codes": list(p.codes),
        "data": list(p.data),
        "security_labels": list(p.security_labels),
        "data_period": [p.data_period_start_us, p.data_period_end_us],
        "provisions": [_provision_json(c) for c in p.provisions],
    }


def rules_from_json(text: str) -> ConsentRules | None:
    """Rules written by :func:`rules_to_json`; None when written by another rules version."""
    body = json.loads(text)
    if body.get("v") != RULES_VERSION:
        return None
    provision = body["provision"]
    return ConsentRules(
        id=body["id"],
        patient=body["patient"],
        status=body["status"],
        scope=body["scope"],
        date_time_us=body["date_time_us"],
        provision=None if provision is None else _provision_from(provision),
    )


def _provision_from(d: dict[str, Any]) -> Provision:
    return Provision(
        type=d["type"],
        explicit=d["explicit"],
        period_start_us=d["period"][0],
        period_end_us=d["period"][1],
        actors=tuple(ActorRef(ref, role) for ref, role in d["actors"]),
        purposes=tuple(d["purposes"]),
        actions=tuple(d["actions"]),
        classes=tuple(d["classes"]),
        codes=tuple(d["codes"]),
        data=tuple(d["data"]),
        security_labels=tuple(d["security_labels"]),
        data_period_start_us=d["data_period"][0],
        data_period_end_us=d["data_period"][1],
        provisions=tuple(_provision_from(c) for c in d["provisions"]),
    )


# ---------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------


def _encode(blob: bytes) -> str:
    return base64.urlsafe_b64encode(blob).decode("ascii")


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text.encode("ascii"))


class ConsentStore:
    """Consents in the store: the FHIR resource encrypted, its rules in the clear."""

    def __init__(self, store: SqlStore, keyring: Keyring) -> None:
        self.store = store
        self.keyring = keyring

    @staticmethod
    def _aad(consent_id: str) -> bytes:
        return f"consents:{consent_id}".encode()

    def put(self, resource: Any, *, patient: str | None = None, now_us: int) -> ConsentRules:
        """Insert or replace the Consent with the resource's id (a new id when it has none).

        The patient is ``Consent.patient`` (``Patient/<id>``), or ``patient`` when
        given (filled in when the resource names none; InputError when it names
        another). ConflictError when the id is a consent of another patient.
        """
        stored = dict(_object(resource, "Consent"))
        if patient is not None:
            if not ID_PATTERN.fullmatch(patient):
                raise InputError(f"not a patient id: {patient!r}", "patient")
            if stored.get("patient") is None:
                stored["patient"] = {"reference": f"Patient/{patient}"}
        if stored.get("id") is None:
            stored["id"] = str(uuid.uuid4())
        rules = parse_consent(stored)
        if patient is not None and rules.patient != patient:
            raise InputError(
                f"refers to Patient/{rules.patient}, not to Patient/{patient}",
                "Consent.patient.reference",
            )
        with self.store.transaction() as conn:
            return self.put_in(conn, stored, now_us=now_us)

    def put_in(self, conn: Connection, resource: Any, *, now_us: int) -> ConsentRules:
        """``put`` inside the caller's transaction (a FHIR Bundle that carries the Consent)."""
        stored = dict(_object(resource, "Consent"))
        rules = parse_consent(stored)
        plaintext = json.dumps(stored, separators=(",", ":")).encode("utf-8")
        row = {
            "patient_id": rules.patient,
            "status": rules.status,
            "rules": rules_to_json(rules),
            "resource": _encode(self.keyring.encrypt(plaintext, aad=self._aad(rules.id))),
            "updated_us": now_us,
        }
        self._write_rules(conn, rules, row)
        return rules

    @staticmethod
    def _write_rules(conn: Connection, rules: ConsentRules, row: dict[str, Any]) -> None:
        table = schema.consents
        existing = conn.execute(sa.select(table.c.patient_id).where(table.c.id == rules.id)).first()
        if existing is None:
            conn.execute(sa.insert(table).values(id=rules.id, **row))
        elif existing.patient_id != rules.patient:
            raise ConflictError(f"consent {rules.id!r} belongs to another patient")
        else:
            conn.execute(sa.update(table).where(table.c.id == rules.id).values(**row))

    def for_patient(self, patient: str) -> list[ConsentRules]:
        """The patient's consents, whatever their status, oldest update first."""
        table = schema.consents
        query = (
            sa.select(table.c.id, table.c.rules)
            .where(table.c.patient_id == patient)
            .order_by(table.c.updated_us, table.c.id)
        )
        with self.store._read() as conn:
            rows = conn.execute(query).all()
        return [self._rules(r.id, r.rules) for r in rows]

    def _rules(self, consent_id: str, text: str) -> ConsentRules:
        rules = rules_from_json(text)
        if rules is None:  # written by another version of the rules: parse the resource again
            rules = parse_consent(self.resource(consent_id))
        return rules

    def resource(self, consent_id: str) -> dict[str, Any]:
        """The FHIR Consent as put (with its id), decrypted; NotFoundError if there is none."""
        table = schema.consents
        with self.store._read() as conn:
            row = conn.execute(sa.select(table.c.resource).where(table.c.id == consent_id)).first()
        if row is None:
            raise NotFoundError(f"no consent {consent_id!r}")
        plaintext = self.keyring.decrypt(_decode(row.resource), aad=self._aad(consent_id))
        loaded: dict[str, Any] = json.loads(plaintext)
        return loaded

    def research_opt_outs(self, at_us: int) -> set[str]:
        """Patients whose active consents deny research at ``at_us``.

        That is: a research export by any researcher (known only by the role) is
        denied. A deny naming particular researchers is not an opt-out.
        """
        table = schema.consents
        query = (
            sa.select(table.c.id, table.c.patient_id, table.c.rules)
            .where(table.c.status == "active")
            .order_by(table.c.patient_id, table.c.updated_us, table.c.id)
        )
        with self.store._read() as conn:
            rows = conn.execute(query).all()
        by_patient: dict[str, list[ConsentRules]] = {}
        for row in rows:
            by_patient.setdefault(row.patient_id, []).append(self._rules(row.id, row.rules))
        return {
            patient
            for patient, consents in by_patient.items()
            if not decide(
                consents, Request(patient, "", "researcher", "research", "export", at_us)
            ).permitted
        }

    def delete_patient(self, patient: str) -> None:
        """Delete every consent of ``patient`` (erasure)."""
        table = schema.consents
        with self.store._write() as conn:
            conn.execute(sa.delete(table).where(table.c.patient_id == patient))
