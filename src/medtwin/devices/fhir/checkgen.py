"""Writes :mod:`medtwin.devices.fhir.r4b_checks`: the fast checkers of every R4 resource type.

One Python function per model class of ``fhir.resources`` (R4B), generated from its
fields (see :mod:`medtwin.devices.fhir.fastcheck` for what they check and why).
Run after upgrading ``fhir.resources``::

    python -m medtwin.devices.fhir.checkgen          # rewrite the module
    python -m medtwin.devices.fhir.checkgen --check  # exit 1 when it is stale

A test runs the check, so the shipped checkers always match the installed models.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import types
import typing
from pathlib import Path
from typing import Any

__all__ = ["TARGET", "main", "module_source", "resource_types"]

TARGET = Path(__file__).with_name("r4b_checks.py")
_INT_MIN, _INT_MAX = -2_147_483_648, 2_147_483_647
_MAX_STRING = 1_048_576
# The names of medtwin.devices.fhir.fastcheck the generated functions call.
_RUNTIME = (
    "BAD",
    "_CODE",
    "_DATE",
    "_DATE_TIME",
    "_DECIMAL",
    "_ID",
    "_INSTANT",
    "_PRINTABLE",
    "_SEEN_CODE",
    "_SEEN_DATE",
    "_SEEN_DATE_TIME",
    "_SEEN_INSTANT",
    "_SEEN_URI",
    "_STRING",
    "_URI",
    "_calendar_ok",
    "_contained",
    "_rare",
)

# A day up to 28 is in every month: the calendar is only asked about later ones.
_CALENDAR = '(len(v) >= 10 and v[8:10] > "28" and not _calendar_ok(v))'


class _Test(typing.NamedTuple):
    """How a primitive value ``v`` is checked: ``bad`` is true when it is refused.

    ``seen``: the set of the strings a regex accepted already (a set lookup costs a
    tenth of a regex call, and codes, systems and dates repeat); ``bad`` then reads
    a string. None: ``bad`` checks the type too.
    """

    bad: str
    seen: str | None = None


_SEEN_MAX = 8192  # strings remembered per set (then it starts anew)
_PRIMITIVES: dict[str, _Test] = {
    "String": _Test(
        f"type(v) is not str or len(v) > {_MAX_STRING}"
        " or (v[:1] not in _PRINTABLE and _STRING(v) is None)"
    ),
    "Code": _Test("_CODE(v) is None", "_SEEN_CODE"),
    "Id": _Test("type(v) is not str or _ID(v) is None"),  # ids are unique: no set
    "Uri": _Test("_URI(v) is None", "_SEEN_URI"),
    # The models check str(value) against the spec regex (bool is an int: refused here).
    "Decimal": _Test("(type(v) is not int and type(v) is not float) or _DECIMAL(str(v)) is None"),
    "Integer": _Test(f"type(v) is not int or not {_INT_MIN} <= v <= {_INT_MAX}"),
    "UnsignedInt": _Test(f"type(v) is not int or not 0 <= v <= {_INT_MAX}"),
    "PositiveInt": _Test(f"type(v) is not int or not 1 <= v <= {_INT_MAX}"),
    "Date": _Test(f"_DATE(v) is None or {_CALENDAR}", "_SEEN_DATE"),
    "DateTime": _Test(f"_DATE_TIME(v) is None or {_CALENDAR}", "_SEEN_DATE_TIME"),
    "Instant": _Test(f"_INSTANT(v) is None or {_CALENDAR}", "_SEEN_INSTANT"),
    "Boolean": _Test("type(v) is not bool"),
}
_PRIMITIVES["Markdown"] = _PRIMITIVES["String"]
_PRIMITIVES["Canonical"] = _PRIMITIVES["Uri"]

# What an element holds: a primitive's _Test, or the name of the function of an
# object (a model's, or _contained).
_Kind = _Test | str


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


def _is_resource(model: type) -> bool:
    return any(base.__name__ in ("Resource", "DomainResource") for base in model.__mro__[1:])


class _Field(typing.NamedTuple):
    kind: _Kind
    many: bool
    group: int | None  # the choice group it belongs to


class _Generator:
    """Writes the functions of model classes, each once (types nest recursively)."""

    def __init__(self) -> None:
        self.names: dict[type, str] = {}
        self.adapters: dict[str, str] = {}  # fhir_core.types name -> function name
        self.pending: list[type] = []

    def resource(self, cls: type, resource_type: str) -> list[str]:
        """The sources of a resource type's function (its class's, ``resourceType``
        required) and of the functions it needs that are not written yet."""
        sources = [self.source(cls, f"_r_{resource_type}", resource_type)]
        while self.pending:
            model = self.pending.pop()
            sources.append(self.source(model, self.names[model], None))
        return sources

    def function(self, model: type) -> str:
        """The name of a model's function (queued to be written when new)."""
        name = self.names.get(model)
        if name is None:
            name = self.names[model] = f"_c{len(self.names)}_{model.__name__}"
            self.pending.append(model)  # written later: types nest recursively
        return name

    def fields(self, cls: type) -> tuple[dict[str, _Field], list[str], list[bool]]:
        """(element name -> field, required names, whether each choice group is required)."""
        fields: dict[str, _Field] = {}
        required: list[str] = []
        groups: dict[str, int] = {}
        needed: list[bool] = []
        for info in cls.model_fields.values():  # type: ignore[attr-defined]
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if not extra.get("element_property") or not info.alias:
                continue  # _x extensions, fhir_comments: refused (the models decide)
            item, many = _unwrap(info.annotation)
            kind = None if item is None else self.kind(item)
            if kind is None:
                continue
            group = extra.get("one_of_many")
            index = None
            if isinstance(group, str):
                index = groups.setdefault(group, len(groups))
                if index == len(needed):
                    needed.append(False)
                if extra.get("one_of_many_required"):
                    needed[index] = True
            fields[info.alias] = _Field(kind, many, index)
            if (info.is_required() or extra.get("element_required")) and info.alias not in required:
                required.append(info.alias)
        return fields, required, needed

    def kind(self, item: Any) -> _Kind | None:
        if item is bool:
            return _PRIMITIVES["Boolean"]
        if typing.get_origin(item) is typing.Annotated:
            metadata = typing.get_args(item)[1:]
            name = type(metadata[0]).__name__ if metadata else ""
            test = _PRIMITIVES.get(name)
            if test is None:
                rare = _rare_name(item)
                adapter = self.adapters.setdefault(rare, f"_A_{rare}")
                test = _Test(f"type(v) is not str or not {adapter}(v)")
            return test
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
            return "_contained"  # any resource, by its resourceType
        if "resourceType" in getattr(model, "model_fields", {}) or _is_resource(model):
            return None
        return self.function(model)

    def source(self, cls: type, name: str, resource_type: str | None) -> str:
        """The source of one object's function ``name(value, budget, refs)``."""
        fields, required, needed = self.fields(cls)
        if resource_type is not None:
            fields["resourceType"] = _Field(_Test(f"v != {resource_type!r}"), False, None)
            required = [*(r for r in required if r != "resourceType"), "resourceType"]
        # Elements checked alike share a branch (the dispatch is by branch number).
        branches: dict[_Field, int] = {}
        numbers = {alias: branches.setdefault(f, len(branches)) for alias, f in fields.items()}
        table = f"_K_{name}"
        lines = [
            f"{table} = {numbers!r}",
            "",
            "",
            f"def {name}(value, budget, refs):",
            "    if type(value) is not dict or not value or budget <= 0:",
            "        return BAD",
            "    out = value.copy()",
            "    below = budget - 1",
            *(f"    g{i} = 0" for i in range(len(needed))),
            "    try:",
            "        for key, v in value.items():",
            f"            k = {table}[key]",
        ]
        lines += _dispatch(list(branches), 0, len(branches), "            ")
        lines += ["    except KeyError:", "        return BAD  # an unknown element"]
        for alias in required:
            lines += [f"    if {alias!r} not in value:", "        return BAD"]
        for i, must in enumerate(needed):
            lines += [f"    if g{i} {'!= 1' if must else '> 1'}:", "        return BAD"]
        if "reference" in fields:
            lines += ['    if type(value.get("reference")) is str:', "        refs.append(out)"]
        lines.append("    return out")
        return "\n".join(lines)


def _dispatch(branches: list[_Field], low: int, high: int, indent: str) -> list[str]:
    """The branches ``low`` to ``high`` (exclusive) chosen by ``k``: a tree of tests."""
    if high - low > 3:
        middle = (low + high) // 2
        return [
            f"{indent}if k < {middle}:",
            *_dispatch(branches, low, middle, indent + "    "),
            f"{indent}else:",
            *_dispatch(branches, middle, high, indent + "    "),
        ]
    lines: list[str] = []
    for number in range(low, high):
        if number == low:
            lines.append(f"{indent}if k == {number}:" if high - low > 1 else f"{indent}if True:")
        elif number < high - 1:
            lines.append(f"{indent}elif k == {number}:")
        else:
            lines.append(f"{indent}else:")
        lines += _branch(branches[number], indent + "    ")
    return lines


def _branch(element: _Field, indent: str) -> list[str]:
    """The check (and copy) of one element's value ``v`` under ``key``."""
    kind, many, group = element
    lines = [] if group is None else [f"g{group} += 1"]
    if many:
        lines += ["if type(v) is not list or not v or below <= 0:", "    return BAD"]
    if isinstance(kind, str) and not many:
        lines += [f"c = {kind}(v, below, refs)", "if c is BAD:", "    return BAD", "out[key] = c"]
    elif isinstance(kind, str):
        lines += ["b = below - 1", "c = []", "for e in v:", f"    e = {kind}(e, b, refs)"]
        lines += ["    if e is BAD:", "        return BAD", "    c.append(e)", "out[key] = c"]
    elif not many:
        lines += _test(kind)
    else:
        # The test reads ``v``: each item is bound to it in turn.
        lines += ["items = v", "for v in items:", *("    " + line for line in _test(kind))]
        lines += ["out[key] = items.copy()"]
    return [indent + line for line in lines]


def _test(test: _Test) -> list[str]:
    """Statements returning BAD when the primitive ``v`` is refused."""
    if test.seen is None:
        return [f"if {test.bad}:", "    return BAD"]
    seen = test.seen
    return [
        "if type(v) is not str:",
        "    return BAD",
        f"if v not in {seen}:",
        f"    if {test.bad}:",
        "        return BAD",
        f"    if len({seen}) >= {_SEEN_MAX}:",
        f"        {seen}.clear()",
        f"    {seen}.add(v)",
    ]


def _rare_name(annotation: Any) -> str:
    """The name in ``fhir_core.types`` of a rare primitive's annotation."""
    import fhir_core.types

    for name in sorted(dir(fhir_core.types)):
        if name.endswith("Type") and getattr(fhir_core.types, name) is annotation:
            return name
    raise LookupError(f"no fhir_core.types name for {annotation!r}")


def resource_types() -> list[str]:
    """Every R4B resource type with a checker (all but Bundle and Parameters), sorted."""
    from fhir.resources import R4B

    found: set[str] = set()
    for module in pkgutil.iter_modules(R4B.__path__):
        if module.name.startswith(("fhirtypes", "_")):
            continue
        namespace = importlib.import_module(f"{R4B.__name__}.{module.name}")
        for name, cls in vars(namespace).items():
            if (
                isinstance(cls, type)
                and cls.__module__ == namespace.__name__
                and getattr(cls, "__resource_type__", None) == name
                and _is_resource(cls)
                and name not in ("Bundle", "Parameters")
            ):
                found.add(name)
    return sorted(found)


def module_source() -> str:
    """The text of :mod:`medtwin.devices.fhir.r4b_checks` for the installed models."""
    import fhir.resources

    from medtwin.devices.fhir.validation import model_class

    generator = _Generator()
    names = resource_types()
    functions: list[str] = []
    for name in names:
        cls = model_class(name)
        assert cls is not None, name  # resource_types found it among the models
        functions += generator.resource(cls, name)
    lines = [
        '"""The fast checkers of the R4 resource types (see medtwin.devices.fhir.fastcheck).',
        "",
        "GENERATED by ``python -m medtwin.devices.fhir.checkgen`` from the R4B models of",
        f"fhir.resources {fhir.resources.__version__}: do not edit.",
        '"""',
        "",
        "from medtwin.devices.fhir.fastcheck import (",
        *(f"    {name}," for name in _RUNTIME),
        ")",
        "",
        *(f"{function} = _rare({name!r})" for name, function in sorted(generator.adapters.items())),
        "",
        "",
        "\n\n\n".join(functions),
        "",
        "",
        "RESOURCES = {",
        *(f"    {name!r}: _r_{name}," for name in names),
        "}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the module is stale")
    args = parser.parse_args(argv)
    text = module_source()
    if args.check:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is stale: run python -m {__spec__.name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
