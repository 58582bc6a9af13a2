"""Consent: FHIR R4 Consent parsing, the decisions on reads and exports, the consent store."""

from __future__ import annotations

import base64
import copy
import json
import os
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtwin.core.clock import to_us
from medtwin.core.errors import ConflictError, InputError, NotFoundError
from medtwin.data.consent import (
    MAX_DEPTH,
    STATUSES,
    ActorRef,
    ConsentRules,
    ConsentStore,
    Decision,
    Provision,
    Request,
    decide,
    parse_consent,
    rules_from_json,
    rules_to_json,
)
from medtwin.data.crypto import CryptoError, Keyring, generate_key
from medtwin.data.store import SqlStore, schema

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-r4-examples"


def at(text: str) -> int:
    return to_us(datetime.fromisoformat(text))


NOW = at("2026-01-15T10:00:00+00:00")


def req(
    actor: str = "alice",
    *,
    role: str = "clinician",
    purpose: str = "treatment",
    action: str = "read",
    at_us: int = NOW,
    patient: str = "f001",
) -> Request:
    return Request(patient, actor, role, purpose, action, at_us)  # type: ignore[arg-type]


def permitted(consents: list[ConsentRules], request: Request) -> bool:
    return decide(consents, request).permitted


def consent(
    provision: dict[str, Any] | None = None,
    *,
    scope: str = "patient-privacy",
    status: str = "active",
    patient: str = "f001",
    consent_id: str = "c1",
    **extra: Any,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": consent_id,
        "status": status,
        "scope": {"coding": [{"code": scope}]},
        "patient": {"reference": f"Patient/{patient}"},
        **extra,
    }
    if provision is not None:
        resource["provision"] = provision
    return resource


def actor(reference: str, role: str = "PRCP") -> dict[str, Any]:
    return {"role": {"coding": [{"code": role}]}, "reference": {"reference": reference}}


def rules(provision: dict[str, Any] | None = None, **kwargs: Any) -> ConsentRules:
    return parse_consent(consent(provision, **kwargs))


# ---------------------------------------------------------------------------
# The official R4 examples: one test each, expectations from their narrative
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples() -> Path:
    if not EXAMPLES.is_dir():
        message = f"FHIR R4 examples not found at {EXAMPLES}"
        if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
            pytest.fail(f"{message} (CI=true: they must be there)", pytrace=False)
        pytest.skip(message)
    return EXAMPLES


def example(folder: Path, name: str) -> ConsentRules:
    resource = json.loads((folder / f"Consent-consent-example-{name}.json").read_text("utf-8"))
    parsed = parse_consent(resource)
    assert parsed.id == f"consent-example-{name}"
    assert parsed.status == "active"
    return parsed


def test_example_not_them_denies_the_named_nurse(examples: Path) -> None:
    # "she does not want her ex-spouse [Practitioner/f204] to have any access to her IIHI"
    c = [example(examples, "notThem")]
    assert not permitted(c, req("Practitioner/f204"))
    assert not permitted(c, req("Practitioner/f204", action="export"))
    assert not permitted(c, req("f204"))  # the medtwin user f204 is Practitioner/f204
    assert not permitted(c, req("Practitioner/f204", role="researcher", purpose="research"))
    assert permitted(c, req("Practitioner/f001"))
    assert permitted(c, req("alice", action="export"))
    # Treatment at GHH stays possible; an emergency overrides the generic deny, audited.
    emergency = decide(c, req("Practitioner/f204", purpose="emergency"))
    assert emergency.permitted
    assert emergency.overridden
    assert emergency.consent_id == "consent-example-notThem"


def test_example_not_time_denies_during_the_timeframe(examples: Path) -> None:
    # "withhold disclosure of all data from a timeframe [2015-01-01..2015-02-01] to any provider"
    c = [example(examples, "notTime")]
    for moment in ("2015-01-01T00:00:00+00:00", "2015-01-15T12:00:00+00:00"):
        assert not permitted(c, req(at_us=at(moment)))
        assert not permitted(c, req("bob", action="export", at_us=at(moment)))
    # A date-only end covers its whole day.
    assert not permitted(c, req(at_us=at("2015-02-01T23:59:59+00:00")))
    assert permitted(c, req(at_us=at("2015-02-02T00:00:00+00:00")))
    assert permitted(c, req(at_us=at("2014-12-31T23:59:59+00:00")))
    assert permitted(c, req())


def test_example_not_org_denies_the_organization(examples: Path) -> None:
    # "withdraw/withhold consent to disclose any instance of his health information
    # to Good Health Clinic [Organization/f001]" (actions: access, correct)
    c = [example(examples, "notOrg")]
    decision = decide(c, req("Organization/f001"))
    assert decision == Decision(
        False, "denied by consent consent-example-notOrg", decision.consent_id
    )
    assert decision.consent_id == "consent-example-notOrg"
    assert not permitted(c, req("Organization/f001", action="export"))  # export involves access
    assert permitted(c, req("Practitioner/f204"))
    assert permitted(c, req("alice"))


def test_example_not_author_withholds_from_every_provider(examples: Path) -> None:
    # "all of the PHI collected at the Good Health Psychiatric Hospital restricted from
    # disclosure to every provider": the hospital is named as custodian (CST), which
    # medtwin cannot tell apart in a record, so the whole record is withheld (fail closed).
    c = [example(examples, "notAuthor")]
    for who in ("alice", "Practitioner/f204", "Organization/f001"):
        assert not permitted(c, req(who))
        assert not permitted(c, req(who, action="export"))


def test_example_not_this_withholds_the_record(examples: Path) -> None:
    # "withhold consent to disclose the order and all results associated with that
    # specific order from all other providers": medtwin releases records whole, so the
    # deny of one order (Task/example3) withholds the record from every provider.
    c = [example(examples, "notThis")]
    assert c[0].provision is not None
    assert c[0].provision.data == ("Task/example3",)
    assert not permitted(c, req("alice"))
    assert not permitted(c, req("bob", action="export"))


def test_example_out_withholds_for_treatment(examples: Path) -> None:
    # "wishes to have no data at the Good Health Psychiatric Hospital available for
    # normal treatment use"
    c = [example(examples, "Out")]
    assert not permitted(c, req("alice"))
    assert not permitted(c, req("alice", action="export"))
    emergency = decide(c, req("alice", purpose="emergency"))
    assert emergency.permitted
    assert emergency.overridden


def test_example_emergency_leaves_emergency_treatment_possible(examples: Path) -> None:
    # "an exception Permit of purposeOfUse ETREAT at Good Health": emergency access is
    # possible. The resource itself never writes `type: deny` next to ETREAT (its only
    # explicit deny names no purpose), so break-glass overrides it, flagged for audit.
    c = [example(examples, "Emergency")]
    emergency = decide(c, req("alice", purpose="emergency"))
    assert emergency.permitted
    assert emergency.overridden
    assert emergency.consent_id == "consent-example-Emergency"
    # Every provision sits under the root's ETREAT purpose, so the "deny all other
    # purposeOfUse" of the narrative is not in the resource: other purposes are
    # untouched by this consent.
    assert decide(c, req("alice")) == Decision(
        True, "no consent applies: implied consent for care", None
    )


def test_example_basic_authorizes_treatment_outside_its_period(examples: Path) -> None:
    # "wishes to have all of the PHI ... available for normal treatment use".
    # Its period ended on 2016-01-01: today the consent is out of force and treatment
    # runs on implied consent. Within the period it reads like notTime (same structure:
    # OPTIN, an untyped root with a period), i.e. as withholding: fail closed.
    c = [example(examples, "basic")]
    assert permitted(c, req())
    assert permitted(c, req(action="export", at_us=at("2016-01-02T00:00:00+00:00")))
    assert not permitted(c, req(at_us=at("2010-06-01T00:00:00+00:00")))


def test_example_grantor_leaves_clinicians_alone(examples: Path) -> None:
    # "wishes to provide XXX [Patient/example] with read-only access": a grant, which
    # takes nothing from the care team.
    c = [example(examples, "grantor")]
    assert permitted(c, req("alice"))
    assert permitted(c, req("alice", action="export"))
    assert permitted(c, req("bob", role="researcher", purpose="research", action="export"))
    # The resource has no `type`, so medtwin reads it as withholding from its recipient:
    # the grant is not expressed, and no access is granted on a reading that could be wrong.
    assert not permitted(c, req("Patient/example"))


def test_example_pkb_denies_the_organization_access(examples: Path) -> None:
    # The narrative is a screenshot of sharing settings; the resource restricts access
    # by Organization/f001 (security labels N, PSY, SPI, SEX). Labels name parts of the
    # record that medtwin cannot tell apart: the deny withholds it, the exceptions
    # (untyped, so permits) cannot be shown to cover it and do not apply.
    c = [example(examples, "pkb")]
    assert c[0].patient == "example"
    assert c[0].provision is not None
    assert len(c[0].provision.provisions) == 11
    assert all(p.type == "permit" and not p.explicit for p in c[0].provision.provisions)
    assert not permitted(c, req("Organization/f001", patient="example"))
    assert not permitted(c, req("Organization/f001", action="export", patient="example"))
    assert permitted(c, req("alice", patient="example"))


def test_example_signature_restricts_the_recipient_during_its_period(examples: Path) -> None:
    # Provision for Practitioner/13 from 2015-10-10 to 2016-10-10, with a permit of the
    # CDA documents authored by Practitioner/xcda-author: medtwin cannot release only
    # those documents, so the recipient gets nothing in the period.
    c = [example(examples, "signature")]
    assert c[0].date_time_us == at("2016-05-26T00:41:10-04:00")
    during = at("2016-01-01T00:00:00+00:00")
    assert not permitted(c, req("Practitioner/13", patient="72", at_us=during))
    assert permitted(c, req("Practitioner/14", patient="72", at_us=during))
    assert permitted(c, req("Practitioner/13", patient="72"))
    assert permitted(c, req("Practitioner/13", patient="72", at_us=at("2016-10-11T00:00:00+00:00")))


def test_example_smartonfhir_is_limited_to_its_half_hour(examples: Path) -> None:
    # Period 2016-06-23T17:02:33+10:00 to 17:32:33+10:00 with a permit to access
    # MedicationRequest only: medtwin releases the record whole, so nothing is released
    # in the window; outside it the consent is not in force.
    c = [example(examples, "smartonfhir")]
    window = [at("2016-06-23T07:02:33+00:00"), at("2016-06-23T07:32:33+00:00")]
    for moment in window:
        assert not permitted(c, req(patient="xcda", at_us=moment))
    assert permitted(c, req(patient="xcda", at_us=window[1] + 1))
    assert permitted(c, req(patient="xcda", at_us=window[0] - 1))


def test_examples_all_parse_and_decide(examples: Path) -> None:
    files = sorted(examples.glob("Consent-*.json"))
    assert len(files) >= 12
    for path in files:
        parsed = parse_consent(json.loads(path.read_text("utf-8")))
        assert rules_from_json(rules_to_json(parsed)) == parsed
        for purpose in ("treatment", "research", "emergency"):
            decide([parsed], req(purpose=purpose, patient=parsed.patient))


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "location"),
    [
        (lambda r: r.pop("resourceType"), "Consent.resourceType"),
        (lambda r: r.update(resourceType="Patient"), "Consent.resourceType"),
        (lambda r: r.pop("patient"), "Consent.patient"),
        (lambda r: r.update(patient={"reference": "Group/g1"}), "Consent.patient.reference"),
        (lambda r: r.update(patient={"display": "x"}), "Consent.patient.reference"),
        (lambda r: r.update(status="done"), "Consent.status"),
        (lambda r: r.pop("status"), "Consent.status"),
        (lambda r: r.pop("scope"), "Consent.scope"),
        (lambda r: r.update(scope={"text": "privacy"}), "Consent.scope"),
        (lambda r: r.update(id="bad id!"), "Consent.id"),
        (lambda r: r.update(dateTime="18-11-2015"), "Consent.dateTime"),
        (lambda r: r["provision"].update(type="maybe"), "Consent.provision.type"),
        (
            lambda r: r["provision"].update(period={"start": "2015-13-01"}),
            "Consent.provision.period.start",
        ),
        (
            lambda r: r["provision"].update(period={"end": "2015-01-01T10:00:00"}),
            "Consent.provision.period.end",
        ),
        (
            lambda r: r["provision"].update(period={"start": "2016-01-01", "end": "2015-01-01"}),
            "Consent.provision.period",
        ),
        (lambda r: r["provision"].update(actor={"reference": "x"}), "Consent.provision.actor"),
        (
            lambda r: r["provision"].update(actor=[{"role": {"coding": [{"code": "PRCP"}]}}]),
            "Consent.provision.actor[0].reference",
        ),
        (
            lambda r: r["provision"].update(provision=[{"purpose": [{"code": 7}]}]),
            "Consent.provision.provision[0].purpose[0].code",
        ),
        (
            lambda r: r["provision"].update(provision=[{"action": ["access"]}]),
            "Consent.provision.provision[0].action[0]",
        ),
    ],
)
def test_parse_names_the_faulty_path(mutate: Any, location: str) -> None:
    resource = consent({"type": "deny"})
    mutate(resource)
    with pytest.raises(InputError) as caught:
        parse_consent(resource)
    assert caught.value.location == location


def test_parse_refuses_what_is_not_an_object() -> None:
    with pytest.raises(InputError) as caught:
        parse_consent([], location="consents[2]")
    assert caught.value.location == "consents[2]"


def test_parse_limits_nesting() -> None:
    provision: dict[str, Any] = {"type": "deny"}
    for _ in range(MAX_DEPTH):
        provision = {"type": "deny", "provision": [provision]}
    with pytest.raises(InputError, match="nested deeper"):
        parse_consent(consent(provision))


def test_parse_reads_periods_at_their_precision() -> None:
    def period(start: str, end: str) -> tuple[int | None, int | None]:
        p = rules({"type": "deny", "period": {"start": start, "end": end}}).provision
        assert p is not None
        return p.period_start_us, p.period_end_us

    assert period("2015", "2015") == (
        at("2015-01-01T00:00:00+00:00"),
        at("2016-01-01T00:00:00+00:00") - 1,
    )
    assert period("2016-02", "2016-12") == (
        at("2016-02-01T00:00:00+00:00"),
        at("2017-01-01T00:00:00+00:00") - 1,
    )
    assert period("2015-01-01T10:00:00+02:00", "2015-01-01T10:00:00.5Z") == (
        at("2015-01-01T08:00:00+00:00"),
        at("2015-01-01T10:00:00.500000+00:00"),
    )


def test_parse_types_actors_and_codes() -> None:
    parsed = rules(
        {
            "actor": [
                actor("https://fhir.example.org/r4/Practitioner/p9/_history/2"),
                actor("Role/Researcher", "CST"),
            ],
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}
            ],
            "action": [{"coding": [{"code": "access"}, {"code": "use"}]}],
            "provision": [{"provision": [{}]}],
        }
    )
    root = parsed.provision
    assert root is not None
    assert (root.type, root.explicit) == ("deny", False)
    assert root.actors == (ActorRef("Practitioner/p9", "PRCP"), ActorRef("Role/researcher", "CST"))
    assert root.purposes == ("HRESCH",)
    assert root.actions == ("access", "use")
    assert root.names_data  # a custodian names where data comes from
    child = root.provisions[0]
    assert (child.type, child.explicit) == ("permit", False)
    assert (child.provisions[0].type, child.provisions[0].explicit) == ("deny", False)


def test_parse_without_provision_takes_the_policy_rule() -> None:
    def policy(code: str) -> dict[str, Any]:
        return {"coding": [{"code": code}]}

    assert rules(policyRule=policy("OPTOUT")).provision == Provision("deny", explicit=False)
    assert rules(policyRule=policy("OPTIN")).provision == Provision("permit", explicit=False)
    assert rules(policyRule=policy("hipaa-auth")).provision is None
    assert rules().provision is None


# ---------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------


def test_no_consent_permits_care_and_research() -> None:
    assert decide([], req()) == Decision(True, "no consent applies: implied consent for care", None)
    assert decide([], req(purpose="research")) == Decision(
        True, "no consent applies: research is opt-out", None
    )


def test_research_opt_out() -> None:
    c = [rules({"type": "deny"}, scope="research")]
    assert not permitted(c, req("r1", role="researcher", purpose="research", action="export"))
    assert not permitted(c, req("r1", role="researcher", purpose="research"))
    assert permitted(c, req())
    assert permitted(c, req(action="export"))
    assert permitted(c, req(purpose="emergency"))


@pytest.mark.parametrize("code", ["HRESCH", "RESCH", "CLINTRCH"])
def test_research_purpose_codes_in_a_privacy_consent(code: str) -> None:
    c = [rules({"type": "deny", "purpose": [{"code": code}]})]
    assert not permitted(c, req(purpose="research"))
    assert permitted(c, req())


def test_research_opt_out_by_policy_rule_alone() -> None:
    c = [rules(scope="research", policyRule={"coding": [{"code": "OPTOUT"}]})]
    assert not permitted(c, req(purpose="research"))
    assert permitted(c, req())


def test_scope_decides_which_requests_a_consent_concerns() -> None:
    treatment_deny = [rules({"type": "deny"}, scope="treatment")]
    assert not permitted(treatment_deny, req())
    assert permitted(treatment_deny, req(purpose="research"))
    for scope in ("patient-privacy", "adr", "something-local"):
        everything = [rules({"type": "deny"}, scope=scope)]
        for purpose in ("treatment", "research"):
            assert not permitted(everything, req(purpose=purpose))


def test_actors_match_users_by_name_and_role() -> None:
    c = [
        rules(
            {
                "type": "deny",
                "actor": [actor("Role/researcher"), actor("Practitioner/mallory")],
            }
        )
    ]
    assert not permitted(c, req("r1", role="researcher", purpose="research"))
    assert not permitted(c, req("mallory"))
    assert not permitted(c, req("Practitioner/mallory"))
    assert permitted(c, req("alice"))
    assert permitted(c, req("Practitioner/alice", role="admin"))


def test_nested_exceptions_override_their_parent() -> None:
    c = [
        rules(
            {
                "type": "deny",
                "provision": [
                    {
                        "type": "permit",
                        "actor": [actor("Practitioner/alice")],
                        "provision": [
                            {"type": "deny", "action": [{"coding": [{"code": "disclose"}]}]}
                        ],
                    }
                ],
            }
        )
    ]
    assert not permitted(c, req("bob"))
    assert permitted(c, req("alice"))
    assert not permitted(c, req("alice", action="export"))


def test_of_matching_sibling_exceptions_a_deny_wins() -> None:
    c = [
        rules(
            {
                "type": "permit",
                "provision": [
                    {"type": "permit", "actor": [actor("Practitioner/alice")]},
                    {"type": "deny", "actor": [actor("Role/clinician")]},
                ],
            }
        )
    ]
    assert not permitted(c, req("alice"))
    assert permitted(c, req("r1", role="researcher", purpose="research"))


def test_permits_grant_only_what_they_name_and_denies_cover_what_they_involve() -> None:
    access = {"coding": [{"code": "access"}]}
    disclose = {"coding": [{"code": "disclose"}]}
    grant = [rules({"type": "deny", "provision": [{"type": "permit", "action": [access]}]})]
    assert permitted(grant, req())
    assert not permitted(grant, req(action="export"))
    no_disclosure = [rules({"type": "deny", "action": [disclose]})]
    assert permitted(no_disclosure, req())
    assert not permitted(no_disclosure, req(action="export"))
    no_access = [rules({"type": "deny", "action": [access]})]
    assert not permitted(no_access, req(action="export"))
    unknown = [rules({"type": "deny", "action": [{"coding": [{"code": "collect"}]}]})]
    assert permitted(unknown, req(action="export"))


def test_data_qualifiers_fail_closed() -> None:
    only_labs = {"class": [{"code": "Observation"}]}
    assert not permitted([rules({"type": "deny", **only_labs})], req())
    c = [rules({"type": "deny", "provision": [{"type": "permit", **only_labs}]})]
    assert not permitted(c, req())


def test_deny_overrides_across_consents_and_inactive_ones_do_not_count() -> None:
    permit = rules({"type": "permit"}, consent_id="a")
    deny = rules({"type": "deny"}, consent_id="b")
    assert decide([permit, deny], req()) == Decision(False, "denied by consent b", "b")
    assert decide([permit], req()) == Decision(True, "permitted by consent a", "a")
    for status in sorted(STATUSES - {"active"}):
        assert decide([permit, replace(deny, status=status)], req()).permitted
    assert decide([deny], req(patient="p2")).permitted  # another patient's consent


def test_emergency_overrides_generic_denies() -> None:
    for provision in (
        {"type": "deny"},
        {"type": "deny", "purpose": [{"code": "TREAT"}]},
        {"type": "deny", "actor": [actor("Practitioner/alice")]},
        {"purpose": [{"code": "ETREAT"}]},  # an inferred deny
    ):
        c = [rules(provision)]
        decision = decide(c, req(purpose="emergency"))
        assert decision.permitted, provision
        assert decision.overridden
        assert decision.consent_id == "c1"
        assert "emergency access overrides consent c1" in decision.reason
    assert not decide([], req(purpose="emergency")).overridden


def test_emergency_obeys_an_explicit_refusal() -> None:
    refusal = {"type": "deny", "purpose": [{"code": "ETREAT"}]}
    decision = decide([rules(refusal)], req(purpose="emergency"))
    assert decision == Decision(
        False, "consent c1 refuses access even in an emergency (ETREAT)", "c1"
    )
    # also for requests matched by a deny nested under the refusal
    nested = {**refusal, "provision": [{"type": "deny", "actor": [actor("Role/clinician")]}]}
    assert not permitted([rules(nested)], req(purpose="emergency"))
    # but a permit nested under it still lets its actor in
    excepted = {
        **refusal,
        "provision": [{"type": "permit", "actor": [actor("Practitioner/alice")]}],
    }
    assert permitted([rules(excepted)], req("alice", purpose="emergency"))
    assert not permitted([rules(excepted)], req("bob", purpose="emergency"))
    # a refusal only concerns emergencies
    assert permitted([rules(refusal)], req())


def test_request_checks_purpose_and_action() -> None:
    with pytest.raises(ValueError, match="purpose"):
        req(purpose="marketing")
    with pytest.raises(ValueError, match="action"):
        req(action="delete")


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

CODES = st.sampled_from(["TREAT", "ETREAT", "HRESCH", "RESCH", "CLINTRCH", "HPAYMT"])
ACTIONS = st.sampled_from(["access", "use", "disclose", "collect", "correct"])
ACTORS = st.builds(
    ActorRef,
    st.sampled_from(
        ["Practitioner/alice", "Practitioner/bob", "Role/clinician", "Role/researcher"]
    ),
    st.sampled_from([None, "PRCP", "CST", "AUT"]),
)
TIMES = st.integers(min_value=0, max_value=4_000_000_000_000_000)


@st.composite
def periods(draw: st.DrawFn) -> tuple[int | None, int | None]:
    start = draw(st.none() | TIMES)
    end = draw(st.none() | TIMES)
    if start is not None and end is not None and start > end:
        start, end = end, start
    return start, end


def provisions(children: st.SearchStrategy[tuple[Provision, ...]]) -> st.SearchStrategy[Provision]:
    return st.builds(
        lambda kind, explicit, period, actors, purposes, actions, classes, kids: Provision(
            kind,
            explicit,
            period[0],
            period[1],
            tuple(actors),
            tuple(purposes),
            tuple(actions),
            tuple(classes),
            provisions=kids,
        ),
        st.sampled_from(["permit", "deny"]),
        st.booleans(),
        periods(),
        st.lists(ACTORS, max_size=2),
        st.lists(CODES, max_size=2),
        st.lists(ACTIONS, max_size=2),
        st.lists(st.just("Observation"), max_size=1),
        children,
    )


PROVISIONS = st.recursive(
    provisions(st.just(())),
    lambda inner: provisions(st.lists(inner, max_size=3).map(tuple)),
    max_leaves=12,
)
CONSENTS = st.builds(
    ConsentRules,
    st.text("abc", min_size=1, max_size=3),
    st.sampled_from(["f001", "p2"]),
    st.sampled_from(sorted(STATUSES)),
    st.sampled_from(["patient-privacy", "research", "treatment", "adr", "other"]),
    st.none() | TIMES,
    st.none() | PROVISIONS,
)
REQUESTS = st.builds(
    Request,
    st.just("f001"),
    st.sampled_from(["alice", "bob", "Practitioner/carol", ""]),
    st.sampled_from(["clinician", "researcher", "admin"]),
    st.sampled_from(["treatment", "research", "emergency"]),
    st.sampled_from(["read", "export"]),
    TIMES,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(CONSENTS, max_size=4), REQUESTS)
def test_decide_never_raises_and_rules_round_trip(
    consents: list[ConsentRules], request: Request
) -> None:
    decision = decide(consents, request)
    assert isinstance(decision.permitted, bool)
    assert decision.reason
    assert decision.consent_id is None or decision.consent_id in {c.id for c in consents}
    for c in consents:
        assert rules_from_json(rules_to_json(c)) == c


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(CONSENTS, max_size=3),
    CONSENTS,
    st.sampled_from(sorted(STATUSES - {"active"})),
    st.integers(min_value=0, max_value=3),
    REQUESTS,
)
def test_an_inactive_consent_never_changes_the_decision(
    consents: list[ConsentRules], extra: ConsentRules, status: str, position: int, request: Request
) -> None:
    before = decide(consents, request)
    with_inactive = [*consents]
    with_inactive.insert(min(position, len(consents)), replace(extra, status=status))
    assert decide(with_inactive, request) == before


@settings(max_examples=200, deadline=None)
@given(st.lists(CONSENTS, max_size=3), REQUESTS)
def test_a_blanket_deny_never_permits_more(consents: list[ConsentRules], request: Request) -> None:
    blanket = ConsentRules("zz", "f001", "active", "patient-privacy", None, Provision("deny"))
    decision = decide([*consents, blanket], request)
    if request.purpose == "emergency":  # break-glass may override it, never silently
        assert not decision.permitted or decision.overridden
    else:
        assert not decision.permitted


# ---------------------------------------------------------------------------
# The consent store, on both backends
# ---------------------------------------------------------------------------


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.from_spec(f"k1:{generate_key()}")


@pytest.fixture
def consents(store: SqlStore, keyring: Keyring) -> ConsentStore:
    return ConsentStore(store, keyring)


def nurse_deny(patient: str = "p1", consent_id: str = "c1", **extra: Any) -> dict[str, Any]:
    resource = consent(
        {"type": "deny", "actor": [actor("Practitioner/f204")]},
        patient=patient,
        consent_id=consent_id,
        **extra,
    )
    resource["patient"]["display"] = "Pieter van de Heuvel"
    return resource


def raw_rows(store: SqlStore) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(schema.consents).order_by(schema.consents.c.id)))


def test_store_round_trip(consents: ConsentStore, store: SqlStore) -> None:
    resource = nurse_deny()
    original = copy.deepcopy(resource)
    stored = consents.put(resource, now_us=NOW)
    assert resource == original  # the caller's dict is left alone
    assert stored == parse_consent(resource)
    assert consents.for_patient("p1") == [stored]
    assert consents.for_patient("p2") == []
    assert consents.resource("c1") == resource
    assert not decide(consents.for_patient("p1"), req("Practitioner/f204", patient="p1")).permitted
    with pytest.raises(NotFoundError):
        consents.resource("nope")


def test_store_keeps_the_resource_encrypted(
    consents: ConsentStore, store: SqlStore, keyring: Keyring
) -> None:
    consents.put(nurse_deny(), now_us=NOW)
    (row,) = raw_rows(store)
    assert row.patient_id == "p1"
    assert row.status == "active"
    assert row.updated_us == NOW
    for secret in ("Patient/p1", "Pieter", "Heuvel", "Consent"):
        assert secret not in row.resource
    assert keyring.key_id_of(base64.urlsafe_b64decode(row.resource)) == "k1"
    # The blob is bound to its consent id: copied to another id it does not open.
    with store.engine.begin() as conn:
        conn.execute(sa.insert(schema.consents).values({**row._asdict(), "id": "c2"}))
    with pytest.raises(CryptoError):
        consents.resource("c2")


def test_store_replaces_by_id_and_assigns_ids(consents: ConsentStore, store: SqlStore) -> None:
    consents.put(nurse_deny(), now_us=NOW)
    consents.put(nurse_deny(status="inactive"), now_us=NOW + 1)
    (only,) = consents.for_patient("p1")
    assert only.status == "inactive"
    assert raw_rows(store)[0].updated_us == NOW + 1
    assert decide(consents.for_patient("p1"), req("Practitioner/f204", patient="p1")).permitted

    fresh = nurse_deny()
    del fresh["id"]
    assigned = consents.put(fresh, now_us=NOW)
    assert assigned.id
    assert assigned.id != "c1"
    assert consents.resource(assigned.id)["id"] == assigned.id
    assert len(consents.for_patient("p1")) == 2


def test_store_patient_from_the_caller(consents: ConsentStore) -> None:
    resource = nurse_deny()
    del resource["patient"]
    stored = consents.put(resource, patient="p3", now_us=NOW)
    assert stored.patient == "p3"
    assert consents.resource("c1")["patient"] == {"reference": "Patient/p3"}
    with pytest.raises(InputError) as caught:
        consents.put(nurse_deny(patient="p4", consent_id="c9"), patient="p3", now_us=NOW)
    assert caught.value.location == "Consent.patient.reference"
    with pytest.raises(ConflictError):
        consents.put(nurse_deny(patient="p4"), now_us=NOW)  # c1 is p3's
    with pytest.raises(InputError) as caught:
        consents.put({"resourceType": "Consent", "status": "active"}, now_us=NOW)
    assert caught.value.location == "Consent.scope"
    assert [c.id for c in consents.for_patient("p3")] == ["c1"]
    assert consents.for_patient("p4") == []


def test_store_reparses_rules_of_another_version(consents: ConsentStore, store: SqlStore) -> None:
    stored = consents.put(nurse_deny(), now_us=NOW)
    with store.engine.begin() as conn:
        conn.execute(sa.update(schema.consents).values(rules='{"v":0}'))
    assert consents.for_patient("p1") == [stored]


def test_research_opt_outs(consents: ConsentStore) -> None:
    opt_out = {"type": "deny"}
    consents.put(consent(opt_out, scope="research", patient="p1", consent_id="a"), now_us=NOW)
    consents.put(
        consent(opt_out, scope="research", patient="p2", consent_id="b", status="inactive"),
        now_us=NOW,
    )
    consents.put(
        consent({"type": "permit"}, scope="research", patient="p3", consent_id="c"), now_us=NOW
    )
    consents.put(  # one researcher only: not an opt-out
        consent(
            {"type": "deny", "actor": [actor("Practitioner/r9")]},
            scope="research",
            patient="p4",
            consent_id="d",
        ),
        now_us=NOW,
    )
    consents.put(  # a privacy deny of research purposes, limited in time
        consent(
            {
                "type": "deny",
                "purpose": [{"code": "HRESCH"}],
                "period": {"start": "2026-01-01", "end": "2026-06-30"},
            },
            patient="p5",
            consent_id="e",
        ),
        now_us=NOW,
    )
    consents.put(
        consent({"type": "deny"}, scope="treatment", patient="p6", consent_id="f"), now_us=NOW
    )
    assert consents.research_opt_outs(NOW) == {"p1", "p5"}
    assert consents.research_opt_outs(at("2026-07-01T00:00:00+00:00")) == {"p1"}


def test_delete_patient(consents: ConsentStore, store: SqlStore) -> None:
    consents.put(nurse_deny("p1", "a"), now_us=NOW)
    consents.put(nurse_deny("p1", "b"), now_us=NOW)
    consents.put(nurse_deny("p2", "c"), now_us=NOW)
    consents.delete_patient("p1")
    assert consents.for_patient("p1") == []
    assert [c.id for c in consents.for_patient("p2")] == ["c"]
    assert [r.id for r in raw_rows(store)] == ["c"]
