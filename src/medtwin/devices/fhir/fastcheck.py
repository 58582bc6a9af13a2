"""A fast, conservative pre-validator compiled from the R4B models' field metadata.

Validating with the pydantic models of ``fhir.resources`` costs ~300 µs per
resource; this checker walks the JSON once with per-type checker functions
compiled (once, lazily) from the models' fields: element names, types,
cardinality, required elements, choice groups, and the FHIR primitive regexes.
It copies the resource while it walks and collects the objects holding a string
``reference`` (the service rewrites them in the copy).

It is deliberately stricter than the models: whatever it is unsure of (primitive
extensions ``_x``, contained resources, nulls, empty objects or arrays, values
the models would coerce, leap seconds, non-ASCII codes, ...) it refuses, and a
refused resource is validated by the models, which produce the error and path.
So it never accepts what the models refuse (a property test checks that).
"""

from __future__ import annotations

import datetime
import re
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

__all__ = ["BAD", "check_resource"]


class _Bad:
    """The refusal marker (a checker returns the checked copy or BAD)."""

    __slots__ = ()


BAD: Any = _Bad()

Checker = Callable[[Any, int, list[dict[str, Any]]], Any]

# Primitive formats of the FHIR R4 spec, narrowed where the models' regex engine
# (Rust, search semantics) and Python's could disagree: ASCII only, full match.
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_CODE = re.compile(r"[!-~]+(?: [!-~]+)*")
_URI = re.compile(r"[!-~]+")
_STRING = re.compile(r"[ !-~]")  # contains one char both engines read as [ \S]
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_DATE = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?"
)
# dateTime/instant with a time: no leap second (60), at most 6 fraction digits.
_TIME_PART = re.compile(
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
    r"(Z|[+\-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
)
_INT_MIN, _INT_MAX = -2_147_483_648, 2_147_483_647
_MAX_STRING = 1_048_576


def _string(value: Any, budget: int, refs: list[dict[str, Any]]) -> Any:
    if type(value) is str and len(value) <= _MAX_STRING and _STRING.search(value):
        return value
    return BAD


def _code(value: Any, budget: int, refs: list[dict[str, Any]]) -> Any:
    if type(value) is str and _CODE.fullmatch(value):
        return value
    return BAD


def _id(value: Any, budget: int, refs: list[dict[str, Any]]) -> Any:
    if type(value) is str and _ID.fullmatch(value):
        return value
    return BAD


def _uri(value: Any, budget: int, refs: list[dict[str, Any]]) -> Any:
    if type(value) is str and _URI.fullmatch(value):
        return value
    return BAD


def _boolean(value: Any, budget: int, refs: list[dict[str, Any]]) -> Any:
    return value if type(value) is bool else BAD


def _integer(low: int) -> Checker:
    def check(value: Any, budget: int, refs: list[dict[str, Any]]) -> Any:
        if type(value) is int and low <= value <= _INT_MAX:
            return value
        return BAD

    return check


def _decimal(value: Any, budget: int, refs: list[dict[str, Any]]) -> Any:
    # The models check str(value) against the spec regex (bool is an int: refused here).
    if (type(value) is int or type(value) is float) and _DECIMAL.fullmatch(str(value)):
        return value
    return BAD


def _calendar_ok(text: str) -> bool:
    """Whether a full date (YYYY-MM-DD...) is a real calendar day."""
    try:
        datetime.date.fromisoformat(text[:10])
    except ValueError:
        return False
    return True


def _date(value: Any, budget: int, refs: list[dict[str, Any]]) -> Any:
    if type(value) is not str or not _DATE.fullmatch(value):
        return BAD
    if len(value) == 10 and not _calendar_ok(value):
        return BAD
    return value


def _date_time(instant: bool) -> Checker:
    def check(value: Any, budget: int, refs: list[dict[str, Any]]) -> Any:
        if type(value) is not str:
            return BAD
        date, sep, _ = value.partition("T")
        if not _DATE.fullmatch(date):
            return BAD
        if not sep:
            if instant or (len(date) == 10 and not _calendar_ok(date)):
                return BAD
            return value
        if len(date) != 10 or not _TIME_PART.fullmatch(value, 10) or not _calendar_ok(date):
            return BAD
        return value

    return check


def _adapter(annotation: Any) -> Checker:
    """Rare primitives (xhtml, url, time, base64, oid, uuid): the models' own type."""
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)

    def check(value: Any, budget: int, refs: list[dict[str, Any]]) -> Any:
        if type(value) is not str:
            return BAD
        try:
            adapter.validate_python(value)
        except (ValidationError, ValueError, TypeError):
            return BAD
        return value

    return check


_PRIMITIVES: dict[str, Checker] = {
    "String": _string,
    "Markdown": _string,
    "Code": _code,
    "Id": _id,
    "Uri": _uri,
    "Canonical": _uri,
    "Decimal": _decimal,
    "Integer": _integer(_INT_MIN),
    "UnsignedInt": _integer(0),
    "PositiveInt": _integer(1),
    "Date": _date,
    "DateTime": _date_time(instant=False),
    "Instant": _date_time(instant=True),
}


def _list_of(item: Checker) -> Checker:
    def check(value: Any, budget: int, refs: list[dict[str, Any]]) -> Any:
        if type(value) is not list or not value or budget <= 0:
            return BAD
        out = []
        for element in value:
            checked = item(element, budget - 1, refs)
            if checked is BAD:
                return BAD
            out.append(checked)
        return out

    return check


class _Spec:
    """One model class: element name -> checker, required names, choice groups."""

    __slots__ = ("choices", "fields", "required", "required_choices")

    def __init__(self) -> None:
        self.fields: dict[str, Checker] = {}
        self.required: frozenset[str] = frozenset()
        self.choices: tuple[frozenset[str], ...] = ()
        self.required_choices: tuple[frozenset[str], ...] = ()


def _object(spec: _Spec) -> Checker:
    def check(value: Any, budget: int, refs: list[dict[str, Any]]) -> Any:
        if type(value) is not dict or not value or budget <= 0:
            return BAD
        fields = spec.fields
        out: dict[str, Any] = {}
        below = budget - 1
        for key, element in value.items():
            checker = fields.get(key)
            if checker is None:
                return BAD
            checked = checker(element, below, refs)
            if checked is BAD:
                return BAD
            out[key] = checked
        keys = out.keys()
        if spec.required and not keys >= spec.required:
            return BAD
        for group in spec.choices:
            if len(keys & group) > 1:
                return BAD
        for group in spec.required_choices:
            if not keys & group:
                return BAD
        if type(out.get("reference")) is str:
            refs.append(out)
        return out

    return check


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(item annotation, is a list) of a field annotation, Optional stripped."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if len(args) != 1:
            return None, False
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        item = inner[0] if len(inner) == 1 else None
        if typing.get_origin(item) in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(item) if a is not type(None)]
            item = rest[0] if len(rest) == 1 else None
        return item, True
    return annotation, False


class _Compiler:
    def __init__(self) -> None:
        self.specs: dict[type, tuple[_Spec, Checker]] = {}

    def model(self, cls: type) -> Checker:
        found = self.specs.get(cls)
        if found is not None:
            return found[1]
        spec = _Spec()
        checker = _object(spec)
        self.specs[cls] = (spec, checker)  # before the fields: types nest recursively
        fields: dict[str, Checker] = {}
        required: set[str] = set()
        groups: dict[str, set[str]] = {}
        needed: set[str] = set()
        for info in cls.model_fields.values():  # type: ignore[attr-defined]
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if not extra.get("element_property") or not info.alias:
                continue  # _x extensions, fhir_comments: refused (the models decide)
            element = self.element(info.annotation)
            if element is None:
                continue
            fields[info.alias] = element
            if info.is_required() or extra.get("element_required"):
                required.add(info.alias)
            group = extra.get("one_of_many")
            if isinstance(group, str):
                groups.setdefault(group, set()).add(info.alias)
                if extra.get("one_of_many_required"):
                    needed.add(group)
        spec.fields = fields
        spec.required = frozenset(required)
        spec.choices = tuple(frozenset(g) for g in groups.values())
        spec.required_choices = tuple(frozenset(groups[g]) for g in sorted(needed))
        return checker

    def element(self, annotation: Any) -> Checker | None:
        item, many = _unwrap(annotation)
        if item is None:
            return None
        checker = self.single(item)
        if checker is None:
            return None
        return _list_of(checker) if many else checker

    def single(self, item: Any) -> Checker | None:
        if item is bool:
            return _boolean
        if typing.get_origin(item) is typing.Annotated:
            metadata = typing.get_args(item)[1:]
            name = type(metadata[0]).__name__ if metadata else ""
            return _PRIMITIVES.get(name) or _adapter(item)
        klass = getattr(item, "get_model_klass", None)
        if klass is None:
            return None
        try:
            model = klass()
        except (ImportError, AttributeError, ValueError, KeyError):
            return None
        if model is None:
            return None
        if getattr(model, "__resource_type__", None) == "Resource":
            return _contained  # any resource, by its resourceType
        if "resourceType" in getattr(model, "model_fields", {}) or _is_resource(model):
            return None
        return self.model(model)


def _contained(value: Any, budget: int, refs: list[dict[str, Any]]) -> Any:
    if type(value) is not dict:
        return BAD
    resource_type = value.get("resourceType")
    checker = _resource_checker(resource_type) if type(resource_type) is str else None
    return BAD if checker is None else checker(value, budget, refs)


def _is_resource(model: type) -> bool:
    return any(base.__name__ in ("Resource", "DomainResource") for base in model.__mro__[1:])


_COMPILER = _Compiler()


@cache
def _resource_checker(resource_type: str) -> Checker | None:
    from medtwin.devices.fhir.validation import model_class

    cls = model_class(resource_type)
    if cls is None or resource_type in ("Bundle", "Parameters") or not _is_resource(cls):
        return None
    _COMPILER.model(cls)
    found = _COMPILER.specs[cls][0]

    def resource_type_of(value: Any, budget: int, refs: list[dict[str, Any]]) -> Any:
        return value if value == resource_type else BAD

    spec = _Spec()
    spec.fields = {**found.fields, "resourceType": resource_type_of}
    spec.required = found.required | {"resourceType"}
    spec.choices = found.choices
    spec.required_choices = found.required_choices
    return _object(spec)


def check_resource(resource: Any, limit: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(copy, objects holding a string ``reference``) of a resource the fast checks
    accept, nesting at most ``limit`` deep; None when the models must decide."""
    if type(resource) is not dict:
        return None
    resource_type = resource.get("resourceType")
    if type(resource_type) is not str or not resource_type.isascii():
        return None
    checker = _resource_checker(resource_type)
    if checker is None:
        return None
    refs: list[dict[str, Any]] = []
    out = checker(resource, limit, refs)
    if out is BAD:
        return None
    result: dict[str, Any] = out
    return result, refs
