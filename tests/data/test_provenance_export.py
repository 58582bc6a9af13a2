"""Provenance exports: FHIR R4 Provenance bundles and W3C PROV-JSON, on real and random trees.

The FHIR side is checked with ``fhir.resources``' R4B models (Provenance is
structurally the same in R4 and R4B), the PROV side with the ``prov`` package as
an independent parser, plus a PROV-N qualified-name check of every identifier
(``prov`` itself is lenient about local names).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prov.model import ProvActivity, ProvAgent, ProvDocument, ProvEntity, ProvRecord

from medtwin.core.clock import SystemClock
from medtwin.data.provenance_export import (
    ACTIVITY_SYSTEM,
    ATTRIBUTE_SYSTEM,
    DERIVED_SYSTEM,
    MISSING_EXTENSION,
    MODULE_SYSTEM,
    OBSERVATION_SYSTEM,
    PARTICIPANT_SYSTEM,
    TRUNCATED_EXTENSION,
    message_system,
    to_fhir,
    to_prov_json,
)
from medtwin.data.store import Origin, SqlStore, open_store
from medtwin.models.modules import ModuleGraph
from medtwin.models.scores.news2_modules import news2_modules
from medtwin.twins.events import EventBus
from medtwin.twins.ingest import Ingestor
from medtwin.twins.planner import Planner
from medtwin.twins.runtime import TwinRuntime

Node = dict[str, Any]

VITALS: list[tuple[str, Any, str]] = [
    ("9279-1", 22, "/min"),
    ("59408-5", 95, "%"),
    ("3150-0", 21, "%"),
    ("8480-6", 105, "mm[Hg]"),
    ("8867-4", 95, "/min"),
    ("80288-4", "A", ""),
    ("8310-5", 38.2, "Cel"),
]

# PROV-N local names (PN_LOCAL) restricted to what the export may write: letters,
# digits, _ - / ~ and %XX anywhere, "." inside but never last.
_CHAR = r"(?:[A-Za-z0-9_\-/~]|%[0-9A-Fa-f]{2})"
_LOCAL = rf"(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{{2}})(?:(?:{_CHAR}|\.)*{_CHAR})?"
QNAME = re.compile(rf"(?:medtwin|prov):{_LOCAL}")
BLANK = re.compile(r"_:[a-z]+[1-9][0-9]*")


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqlStore]:
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    yield store
    store.close()


@pytest.fixture
def planner(sqlite_store: SqlStore) -> Planner:
    """A planner over one twin, p1, with a full NEWS2 vital set from API request req-1."""
    clock = SystemClock()
    runtime = TwinRuntime(clock)
    ingestor = Ingestor(sqlite_store, runtime, EventBus(), clock)
    when = (datetime.now(UTC) - timedelta(minutes=3)).isoformat().replace("+00:00", "Z")
    items = [
        {
            "id": f"v{i}",
            "source": "monitor-7",
            "patient": "p1",
            "code": code,
            "value": value,
            "unit": unit,
            "time": when,
        }
        for i, (code, value, unit) in enumerate(VITALS)
    ]
    results = ingestor.ingest(items, origins=[Origin("api", "req-1", f"[{i}]") for i in range(7)])
    assert [r.status for r in results] == ["stored"] * 7
    return Planner(ModuleGraph(news2_modules(), codes=runtime.codes), runtime, sqlite_store)


@pytest.fixture
def fingerprint(planner: Planner) -> str:
    return planner.request(["news2"], ["p1"]).fingerprint("news2", "p1")


@pytest.fixture
def tree(planner: Planner, fingerprint: str) -> Node:
    return planner.provenance.tree(fingerprint)


# -- helpers ----------------------------------------------------------------------


def distinct(tree: Node) -> tuple[dict[str, Node], dict[str, Node]]:
    """The distinct results (first expanded occurrence preferred) and present observations."""
    results: dict[str, Node] = {}
    observations: dict[str, Node] = {}

    def visit(node: Node) -> None:
        if node.get("missing"):
            return
        if node["type"] == "observation":
            observations.setdefault(node["id"], node)
        elif node["type"] == "result":
            held = results.get(node["id"])
            if held is None or ("inputs" in node and "inputs" not in held):
                results[node["id"]] = node
            for child in node.get("inputs", []):
                visit(child)

    visit(tree)
    return results, observations


def provenances(bundle: Node, system: str) -> list[Node]:
    """The bundle's Provenance resources whose target has identifier ``system``."""
    resources = [entry["resource"] for entry in bundle["entry"]]
    return [r for r in resources if r["target"][0]["identifier"]["system"] == system]


def parse_prov(doc: Node) -> ProvDocument:
    parsed = ProvDocument.deserialize(content=json.dumps(doc), format="json")
    assert isinstance(parsed, ProvDocument)
    return parsed


def typed(document: ProvDocument, cls: type[ProvRecord], prov_type: str) -> list[ProvRecord]:
    """Records of ``cls`` whose prov:type includes ``prov_type`` (a qualified name)."""
    wanted = document.valid_qualified_name(prov_type)
    return [r for r in document.get_records(cls) if wanted in r.get_asserted_types()]


def relation_counts(document: ProvDocument) -> Counter[str]:
    return Counter(type(r).__name__ for r in document.get_records() if r.is_relation())


def check_qualified_names(doc: Node) -> None:
    """Every element id, relation id, attribute name and reference is a valid name."""
    for kind, records in doc.items():
        if kind == "prefix":
            continue
        for identifier, attributes in records.items():
            relation = kind not in ("entity", "activity", "agent")
            assert (BLANK if relation else QNAME).fullmatch(identifier), identifier
            for name, value in attributes.items():
                assert QNAME.fullmatch(name), name
                if name in {
                    "prov:entity",
                    "prov:activity",
                    "prov:agent",
                    "prov:generatedEntity",
                    "prov:usedEntity",
                }:
                    assert QNAME.fullmatch(value), value
                if name in {"prov:generation", "prov:usage"}:
                    assert BLANK.fullmatch(value), value
                if isinstance(value, dict) and value.get("type") == "prov:QUALIFIED_NAME":
                    assert QNAME.fullmatch(value["$"]), value


def check_fhir(bundle: Node) -> None:
    """The bundle validates as R4B and names each resource once."""
    Bundle.model_validate(bundle)
    ids = [entry["resource"]["id"] for entry in bundle["entry"]]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", i) for i in ids)
    urls = [entry["fullUrl"] for entry in bundle["entry"]]
    assert len(urls) == len(set(urls))


# -- FHIR on a real tree ----------------------------------------------------------


def test_fhir_bundle_validates_with_one_provenance_per_distinct_node(tree: Node) -> None:
    bundle = to_fhir(tree)
    check_fhir(bundle)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "collection"
    assert len(provenances(bundle, DERIVED_SYSTEM)) == 8  # news2 and its seven sub-scores
    assert len(provenances(bundle, OBSERVATION_SYSTEM)) == 7  # one per vital sign
    assert len(bundle["entry"]) == 15
    # The same tree gives the same bundle.
    assert to_fhir(tree) == bundle


def test_fhir_result_provenance_names_module_time_and_inputs(tree: Node) -> None:
    bundle = to_fhir(tree)
    root = provenances(bundle, DERIVED_SYSTEM)[0]
    fp = tree["fingerprint"]
    assert root["id"] == f"derived-{fp}"
    assert root["target"] == [
        {"identifier": {"system": DERIVED_SYSTEM, "value": fp}, "display": "news2"}
    ]
    assert root["recorded"] == tree["computed"]
    assert root["activity"]["coding"] == [
        {"system": ACTIVITY_SYSTEM, "code": "Derivation", "display": "wasDerivedFrom"}
    ]
    (agent,) = root["agent"]
    assert agent["type"]["coding"][0] == {
        "system": PARTICIPANT_SYSTEM,
        "code": "assembler",
        "display": "Assembler",
    }
    assert agent["who"] == {
        "type": "Device",
        "identifier": {"system": MODULE_SYSTEM, "value": f"news2|{tree['version']}"},
        "display": f"news2 v{tree['version']}",
    }
    # One entity per input, in order, displayed by the module's input name.
    assert [e["what"]["display"] for e in root["entity"]] == [c["input"] for c in tree["inputs"]]
    assert all(e["role"] == "source" for e in root["entity"])


def test_fhir_every_result_entity_resolves_in_the_bundle(tree: Node) -> None:
    bundle = to_fhir(tree)
    targets = {
        (r["target"][0]["identifier"]["system"], r["target"][0]["identifier"]["value"])
        for r in (entry["resource"] for entry in bundle["entry"])
    }
    results, _ = distinct(tree)
    attributes = 0
    for resource in provenances(bundle, DERIVED_SYSTEM):
        node = results[resource["target"][0]["identifier"]["value"]]
        assert len(resource.get("entity", [])) == len(node["inputs"])
        for entity, child in zip(resource.get("entity", []), node["inputs"], strict=True):
            identifier = entity["what"]["identifier"]
            assert entity["what"]["display"] == child["input"]
            if identifier["system"] == ATTRIBUTE_SYSTEM:
                assert identifier["value"] == f"{child['input']}={child['value']}"
                attributes += 1
            else:
                assert (identifier["system"], identifier["value"]) in targets
    assert attributes >= 1  # the SpO2 scale


def test_fhir_observation_provenance_names_its_message(tree: Node) -> None:
    bundle = to_fhir(tree)
    _, observations = distinct(tree)
    found = provenances(bundle, OBSERVATION_SYSTEM)
    assert {r["target"][0]["identifier"]["value"] for r in found} == set(observations)
    for resource in found:
        node = observations[resource["target"][0]["identifier"]["value"]]
        index = int(node["source_id"].removeprefix("v"))
        assert resource["recorded"] == node["received"]
        assert resource["target"][0]["display"] == VITALS[index][0]
        assert resource["entity"] == [
            {
                "role": "source",
                "what": {
                    "identifier": {"system": message_system("api"), "value": "req-1"},
                    "display": f"[{index}]",
                },
            }
        ]
        assert resource["agent"][0]["who"]["display"] == "monitor-7"


# -- PROV-JSON on a real tree -----------------------------------------------------


def test_prov_json_parses_with_prov_and_has_the_same_counts(tree: Node) -> None:
    doc = to_prov_json(tree)
    check_qualified_names(doc)
    assert doc["prefix"] == {"medtwin": "urn:medtwin:"}
    parsed = parse_prov(doc)
    results, observations = distinct(tree)
    edges = sum(len(node["inputs"]) for node in results.values())
    assert len(typed(parsed, ProvEntity, "medtwin:DerivedValue")) == 8
    assert len(typed(parsed, ProvEntity, "medtwin:Observation")) == 7
    assert len(typed(parsed, ProvEntity, "medtwin:Message")) == 1
    assert len(typed(parsed, ProvAgent, "prov:SoftwareAgent")) == 8
    assert len(list(parsed.get_records(ProvActivity))) == 8
    assert relation_counts(parsed) == {
        "ProvGeneration": 8,
        "ProvAssociation": 8,
        "ProvUsage": edges,
        "ProvDerivation": edges + 7,  # each input edge, and each observation from its message
    }
    assert len(observations) == 7


def test_prov_json_records_what_each_run_did(tree: Node) -> None:
    doc = to_prov_json(tree)
    fp = tree["fingerprint"]
    entity, run = f"medtwin:derived/{fp}", f"medtwin:run/{fp}"
    agent = f"medtwin:module/news2/{tree['version']}"
    assert doc["entity"][entity]["medtwin:output_score"] == tree["outputs"]["score"]
    assert doc["activity"][run]["prov:startTime"] == tree["computed"]
    assert doc["activity"][run]["prov:endTime"] == tree["computed"]
    assert doc["agent"][agent]["prov:type"] == {
        "$": "prov:SoftwareAgent",
        "type": "prov:QUALIFIED_NAME",
    }
    assert {"prov:activity": run, "prov:agent": agent} in doc["wasAssociatedWith"].values()
    generated = [g for g in doc["wasGeneratedBy"].values() if g["prov:entity"] == entity]
    assert generated == [
        {"prov:entity": entity, "prov:activity": run, "prov:time": tree["computed"]}
    ]
    used = {u["prov:entity"] for u in doc["used"].values() if u["prov:activity"] == run}
    assert used == {f"medtwin:derived/{c['id']}" for c in tree["inputs"]}
    # An observation id's "|" is percent-encoded, and it derives from its message entry.
    message = "medtwin:message/api/req-1"
    assert doc["entity"][message]["medtwin:channel"] == "api"
    primary = [d for d in doc["wasDerivedFrom"].values() if d["prov:usedEntity"] == message]
    assert {(d["prov:generatedEntity"], d["medtwin:entry"]) for d in primary} == {
        (f"medtwin:observation/monitor-7%7Cv{i}%7C1", f"[{i}]") for i in range(7)
    }


# -- truncated trees --------------------------------------------------------------


def test_truncated_tree_exports_and_marks_truncation(planner: Planner, fingerprint: str) -> None:
    tree = planner.provenance.tree(fingerprint, depth=1)
    bundle = to_fhir(tree)
    check_fhir(bundle)
    derived = provenances(bundle, DERIVED_SYSTEM)
    assert len(derived) == 8
    assert provenances(bundle, OBSERVATION_SYSTEM) == []
    root, *cut = derived
    assert "extension" not in root
    assert len(root["entity"]) == 7
    for resource in cut:
        assert resource["extension"] == [{"url": TRUNCATED_EXTENSION, "valueBoolean": True}]
        assert "entity" not in resource

    doc = to_prov_json(tree)
    check_qualified_names(doc)
    parsed = parse_prov(doc)
    entities = typed(parsed, ProvEntity, "medtwin:DerivedValue")
    assert len(entities) == 8  # the cut results are still listed
    assert sum(1 for e in doc["entity"].values() if e.get("medtwin:truncated")) == 7
    assert relation_counts(parsed) == {
        "ProvGeneration": 8,
        "ProvAssociation": 8,
        "ProvUsage": 7,
        "ProvDerivation": 7,
    }


# -- missing records and missing origins ------------------------------------------


def _observation(source_id: str, origin: Node | None) -> Node:
    return {
        "id": f"dev 1|{source_id}|2",
        "type": "observation",
        "source": "dev 1",
        "source_id": source_id,
        "version": 2,
        "patient": "p/1",
        "system": "http://loinc.org",
        "code": "8867-4",
        "value": 80.0,
        "unit": "/min",
        "time": "2026-01-01T11:00:00Z",
        "status": "final",
        "received": "2026-01-01T11:00:01.5Z",
        "origin": origin,
    }


def test_missing_inputs_and_observations_without_origin() -> None:
    tree: Node = {
        "id": "fp.root.",
        "type": "result",
        "module": "m|x",
        "version": "2.0",
        "fingerprint": "fp.root.",
        "patient": "p/1",
        "computed": "2026-01-01T12:00:00Z",
        "outputs": {"a b": 1.5, "gone": None},
        "parameters": {"k": [1, 2]},
        "inputs": [
            {"input": "hr", **_observation("x/1", None)},
            {"input": "hr2", **_observation("x 2", {"channel": "mqtt", "message": "ward/3"})},
            {"input": "old", "id": "dev 1|erased|1", "type": "observation", "missing": True},
            {"input": "up", "id": "never-stored", "type": "result", "missing": True},
            {"input": "flag", "type": "attribute", "value": None},
        ],
    }
    bundle = to_fhir(tree)
    check_fhir(bundle)
    assert len(provenances(bundle, DERIVED_SYSTEM)) == 1
    observations = provenances(bundle, OBSERVATION_SYSTEM)
    assert len(observations) == 2  # the missing one has no record to describe
    no_origin, from_mqtt = observations
    assert "entity" not in no_origin
    assert from_mqtt["entity"][0]["what"] == {
        "identifier": {"system": "urn:medtwin:message:mqtt", "value": "ward/3"}
    }
    entities = provenances(bundle, DERIVED_SYSTEM)[0]["entity"]
    missing = [e for e in entities if e.get("extension")]
    assert [e["what"]["display"] for e in missing] == ["old", "up"]
    assert all(
        e["extension"] == [{"url": MISSING_EXTENSION, "valueBoolean": True}] for e in missing
    )
    assert entities[-1]["what"]["identifier"] == {"system": ATTRIBUTE_SYSTEM, "value": "flag="}

    doc = to_prov_json(tree)
    check_qualified_names(doc)
    parse_prov(doc)
    root = doc["entity"]["medtwin:derived/fp.root%2E"]
    assert root["medtwin:output_a%20b"] == 1.5
    assert "medtwin:output_gone" not in root  # PROV has no null literal
    assert doc["entity"]["medtwin:derived/never-stored"]["medtwin:missing"] is True
    assert doc["entity"]["medtwin:observation/dev%201%7Cerased%7C1"]["medtwin:missing"] is True
    assert "medtwin:module/m%7Cx/2.0" in doc["agent"]
    assert len(doc["wasDerivedFrom"]) == 5 + 1  # five inputs, one message


def test_a_result_both_truncated_and_expanded_keeps_the_expansion() -> None:
    leaf: Node = {
        "id": "up",
        "type": "result",
        "module": "u",
        "version": "1",
        "fingerprint": "up",
        "patient": "p1",
        "computed": "2026-01-01T12:00:00Z",
        "outputs": {"x": 1.0},
        "parameters": {},
    }
    cut = {"input": "deep", **leaf, "truncated": True}
    expanded = {
        "input": "near",
        **leaf,
        "inputs": [{"input": "k", "type": "attribute", "value": "1"}],
    }
    middle = {**leaf, "input": "mid", "id": "mid", "fingerprint": "mid", "inputs": [cut]}
    tree = {**leaf, "id": "root", "fingerprint": "root", "inputs": [middle, expanded]}
    bundle = to_fhir(tree)
    check_fhir(bundle)
    (up,) = [r for r in provenances(bundle, DERIVED_SYSTEM) if r["id"] == "derived-up"]
    assert "extension" not in up
    assert up["entity"][0]["what"]["identifier"]["value"] == "k=1"
    doc = to_prov_json(tree)
    assert "medtwin:truncated" not in doc["entity"]["medtwin:derived/up"]
    assert len(doc["used"]) == 4  # root: mid, up; mid: up; up: k


# -- random trees -----------------------------------------------------------------

_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Co", "Cn")),
    min_size=1,
    max_size=8,
)
_TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.isoformat().replace("+00:00", "Z"))
_FLOATS = st.floats(allow_nan=False, allow_infinity=False)
# Small pools of ids, so that the same result or observation recurs under several parents.
_FINGERPRINTS = st.sampled_from(["0f3a", "b7c1", "9e2d", "a.b-c", "x|y/z", "sp ace", "." * 3])
_SOURCE_IDS = st.sampled_from(["v0", "v 1", "a/b|c", "ü:é"])


@st.composite
def _observations(draw: st.DrawFn) -> Node:
    source = draw(st.sampled_from(["monitor-7", "his|a", "a b/c"]))
    source_id = draw(_SOURCE_IDS)
    version = draw(st.integers(1, 3))
    origin = draw(
        st.none()
        | st.fixed_dictionaries(
            {
                "channel": st.sampled_from(["api", "file", "fhir", "mllp", "mqtt", "demo"]),
                "message": _TEXT,
                "entry": st.none() | _TEXT,
            }
        )
    )
    return {
        "id": f"{source}|{source_id}|{version}",
        "type": "observation",
        "source": source,
        "source_id": source_id,
        "version": version,
        "patient": draw(_TEXT),
        "system": "http://loinc.org",
        "code": draw(st.sampled_from([code for code, _, _ in VITALS])),
        "value": draw(_FLOATS | st.integers(-(10**6), 10**6) | _TEXT),
        "unit": draw(st.sampled_from(["/min", "%", "", "mm[Hg]"])),
        "time": draw(_TIMES),
        "status": draw(st.sampled_from(["final", "amended", "entered-in-error"])),
        "received": draw(_TIMES),
        "origin": origin,
    }


def _named(nodes: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    """A child: a node with the module's input name."""
    return st.builds(lambda name, node: {"input": name, **node}, _TEXT, nodes)


_LEAVES = st.one_of(
    _named(_observations()),
    _named(st.fixed_dictionaries({"type": st.just("attribute"), "value": st.none() | _TEXT})),
    _named(
        st.fixed_dictionaries(
            {"id": _FINGERPRINTS, "type": st.sampled_from(["result", "observation"])}
        ).map(lambda n: {**n, "missing": True})
    ),
)


def _results(children: st.SearchStrategy[list[Node]]) -> st.SearchStrategy[Node]:
    def build(fp: str, fields: Node, body: Node) -> Node:
        return {"id": fp, "type": "result", "fingerprint": fp, **fields, **body}

    return st.builds(
        build,
        _FINGERPRINTS,
        st.fixed_dictionaries(
            {
                "module": _TEXT,
                "version": _TEXT,
                "patient": _TEXT,
                "computed": _TIMES,
                "outputs": st.dictionaries(_TEXT, st.none() | _FLOATS, max_size=3),
                "parameters": st.dictionaries(_TEXT, _FLOATS | _TEXT, max_size=2),
            }
        ),
        children.map(lambda inputs: {"inputs": inputs}) | st.just({"truncated": True}),
    )


_TREES = st.recursive(
    _results(st.lists(_LEAVES, max_size=4)),
    lambda inner: _results(st.lists(_LEAVES | _named(inner), max_size=4)),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TREES)
def test_random_trees_export_to_valid_fhir_and_prov(tree: Node) -> None:
    results, observations = distinct(tree)
    bundle = to_fhir(tree)
    check_fhir(bundle)
    assert len(provenances(bundle, DERIVED_SYSTEM)) == len(results)
    assert len(provenances(bundle, OBSERVATION_SYSTEM)) == len(observations)

    doc = to_prov_json(tree)
    check_qualified_names(doc)
    parsed = parse_prov(doc)
    assert len(list(parsed.get_records(ProvActivity))) == len(results)
    assert len(typed(parsed, ProvEntity, "medtwin:DerivedValue")) >= len(results)
    # Observation entities: the present ones, plus missing ones under other ids.
    observation_ids = {
        i
        for i, e in doc["entity"].items()
        if e["prov:type"]["$"] == "medtwin:Observation" and not e.get("medtwin:missing")
    }
    assert len(observation_ids) == len(observations)
    edges = sum(len(node.get("inputs", [])) for node in results.values())
    assert len(doc["used"]) == edges
    origins = sum(1 for node in observations.values() if node["origin"] is not None)
    assert len(doc["wasDerivedFrom"]) == edges + origins
