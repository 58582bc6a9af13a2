"""Alarm rules: configuration (TOML or JSON), validated at load with errors naming rule and field.

A rules file holds ``[defaults]`` (optional) and one ``[[rule]]`` table per rule::

    [defaults]
    escalation = [{ to = "care-team", timeout_minutes = 5 }, { to = "role:admin" }]
    suppress_minutes = 0          # after a resolution, no re-raise for this long

    [[rule]]
    id = "news2-high"
    title = "NEWS2 7 or more"
    priority = "high"             # low / medium / high (IEC 60601-1-8)
    kind = "threshold"
    source = "news2:score"        # module:output; a list means "any of them"
    op = ">="
    value = 7
    hysteresis = 1                # raised at >= 7, cleared below 7 - 1

Rule kinds (every value is a module output, so a rule over a module that lands
later needs no code, only configuration):

``threshold``
    ``source`` (one or a list of ``module:output``), ``op`` (``>=``, ``>``, ``<=``,
    ``<``), ``value``, ``hysteresis`` (>= 0). Raised when the condition holds for
    any source; cleared once every source is past the clear level: below
    ``value - hysteresis`` for ``>=``/``>``, above ``value + hysteresis`` for
    ``<=``/``<``.
``band``
    ``source`` and ``equals``: the band labels (or numbers) that raise. Labels are
    resolved through :data:`LABELS` (``news2:band`` indexes NEWS2's bands).
    Cleared when the value is another band.
``trend``
    ``source`` (one), ``change`` (signed: +3 is a rise of 3 or more, -20 a fall of
    20 or more), ``window_minutes``, ``hysteresis``. The change is the value now
    minus the lowest (rise) or highest (fall) value seen in the window. The values
    seen are kept in memory: after a restart a trend counts from then on.
``forecast``
    ``module`` and ``points``: the module's outputs per horizon,
    ``[{ minutes = 30, output = "p50_30min" }, ...]``; ``op`` ``<``/``<=``/``>``/``>=``,
    ``value``, ``within_minutes``, ``hysteresis``. Raised when a predicted value
    at a horizon within ``within_minutes`` meets the condition.

A missing value (a null output: no data in the window) neither raises nor clears:
no data is not evidence of recovery, so an alarm stays until the data clears it
or a clinician resolves it.

Escalation: a chain of recipients, ``care-team`` (the patient's care team),
``role:<clinician|admin>`` or ``user:<name>``, each with the minutes it has to
acknowledge before the alarm moves on to the next (the last one keeps it).

Unknown modules: a rule may name a module the service does not run (yet). With
the ``warn`` policy (default) that rule is disabled and a warning names it; with
``error`` loading fails. An unknown output of a known module is always an error.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medtwin.core.errors import ConfigurationError
from medtwin.data.accounts import Role
from medtwin.models.scores.news2 import BANDS

__all__ = [
    "LABELS",
    "PRIORITIES",
    "AlarmConfigError",
    "BandRule",
    "Defaults",
    "EscalationStep",
    "ForecastRule",
    "Rule",
    "RuleSet",
    "Source",
    "ThresholdRule",
    "TrendRule",
    "load_rules",
    "parse_rules",
]

log = logging.getLogger(__name__)

Priority = Literal["low", "medium", "high"]
PRIORITIES: tuple[str, ...] = ("low", "medium", "high")
"""IEC 60601-1-8 alarm priorities, least urgent first."""

LABELS: dict[str, tuple[str, ...]] = {"news2:band": BANDS}
"""Coded outputs: ``module:output`` -> the label of each value (the value is the index)."""

_RECIPIENT = re.compile(r"^(care-team|role:(?P<role>[a-z]+)|user:(?P<user>[A-Za-z0-9._@-]{1,64}))$")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class AlarmConfigError(ConfigurationError):
    """An alarm rules file that cannot be used; the message names the rule and field."""


class Source(BaseModel):
    """One module output, written ``module:output``."""

    model_config = ConfigDict(frozen=True)

    module: str
    output: str

    @classmethod
    def parse(cls, text: str) -> Source:
        module, sep, output = text.rpartition(":")
        if not sep or not module or not output:
            raise ValueError(f"{text!r} is not 'module:output'")
        return cls(module=module, output=output)

    def __str__(self) -> str:
        return f"{self.module}:{self.output}"


def _sources(value: Any) -> Any:
    if isinstance(value, str):
        return [Source.parse(value)]
    if isinstance(value, list):
        return [Source.parse(v) if isinstance(v, str) else v for v in value]
    return value


class EscalationStep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    to: str
    timeout_minutes: float | None = Field(None, gt=0)

    @field_validator("to")
    @classmethod
    def _recipient(cls, value: str) -> str:
        match = _RECIPIENT.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not 'care-team', 'role:<role>' or 'user:<name>'")
        role = match.group("role")
        if role is not None and role not in {r.value for r in Role}:
            raise ValueError(f"unknown role {role!r} (one of {sorted(r.value for r in Role)})")
        return value


def _chain(steps: list[EscalationStep]) -> list[EscalationStep]:
    if not steps:
        raise ValueError("needs at least one recipient")
    for i, step in enumerate(steps[:-1]):
        if step.timeout_minutes is None:
            raise ValueError(f"recipient {i} ({step.to}) needs timeout_minutes: another follows it")
    return steps


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    escalation: list[EscalationStep] = Field(
        default_factory=lambda: [EscalationStep(to="care-team")]
    )
    suppress_minutes: float = Field(0.0, ge=0)

    @field_validator("escalation")
    @classmethod
    def _check_chain(cls, value: list[EscalationStep]) -> list[EscalationStep]:
        return _chain(value)


class _RuleBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    title: str = Field(min_length=1, max_length=200)
    priority: Priority
    enabled: bool = True
    escalation: list[EscalationStep] | None = None
    suppress_minutes: float | None = Field(None, ge=0)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("use 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
        return value

    @field_validator("escalation")
    @classmethod
    def _escalation(cls, value: list[EscalationStep] | None) -> list[EscalationStep] | None:
        return None if value is None else _chain(value)

    def sources(self) -> list[Source]:
        raise NotImplementedError


_Op = Literal[">=", ">", "<=", "<"]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class ThresholdRule(_RuleBase):
    kind: Literal["threshold"]
    source: Annotated[list[Source], Field(min_length=1)]
    op: _Op
    value: float
    hysteresis: float = Field(0.0, ge=0)

    @field_validator("source", mode="before")
    @classmethod
    def _parse_source(cls, value: Any) -> Any:
        return _sources(value)

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: float) -> float:
        return _finite(value)

    def sources(self) -> list[Source]:
        return list(self.source)


class BandRule(_RuleBase):
    kind: Literal["band"]
    source: Source
    equals: Annotated[list[str | float], Field(min_length=1)]

    @field_validator("source", mode="before")
    @classmethod
    def _parse_source(cls, value: Any) -> Any:
        return Source.parse(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _labels(self) -> BandRule:
        labels = LABELS.get(str(self.source))
        for item in self.equals:
            if isinstance(item, str) and (labels is None or item not in labels):
                known = f"one of {list(labels)}" if labels else "numbers (no labels are known)"
                raise ValueError(f"equals: {item!r} is not a band of {self.source}: use {known}")
        return self

    def codes(self) -> frozenset[float]:
        """The raising values as numbers (labels resolved to their index)."""
        labels = LABELS.get(str(self.source), ())
        return frozenset(
            float(labels.index(item)) if isinstance(item, str) else float(item)
            for item in self.equals
        )

    def sources(self) -> list[Source]:
        return [self.source]


class TrendRule(_RuleBase):
    kind: Literal["trend"]
    source: Source
    change: float
    window_minutes: float = Field(gt=0, le=7 * 24 * 60)
    hysteresis: float = Field(0.0, ge=0)

    @field_validator("source", mode="before")
    @classmethod
    def _parse_source(cls, value: Any) -> Any:
        return Source.parse(value) if isinstance(value, str) else value

    @field_validator("change")
    @classmethod
    def _change(cls, value: float) -> float:
        if value == 0 or not math.isfinite(value):
            raise ValueError("must be a non-zero number: + for a rise, - for a fall")
        return value

    def sources(self) -> list[Source]:
        return [self.source]


class ForecastPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    minutes: float = Field(gt=0)
    output: str = Field(min_length=1)


class ForecastRule(_RuleBase):
    kind: Literal["forecast"]
    module: str = Field(min_length=1)
    points: Annotated[list[ForecastPoint], Field(min_length=1)]
    op: _Op
    value: float
    within_minutes: float = Field(gt=0)
    hysteresis: float = Field(0.0, ge=0)

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: float) -> float:
        return _finite(value)

    @model_validator(mode="after")
    def _horizon(self) -> ForecastRule:
        if not self.horizon():
            raise ValueError(
                f"within_minutes: no point is within {self.within_minutes:g} minutes "
                f"(points at {[p.minutes for p in self.points]})"
            )
        return self

    def horizon(self) -> list[Source]:
        """The outputs of the points within ``within_minutes``."""
        return [
            Source(module=self.module, output=p.output)
            for p in self.points
            if p.minutes <= self.within_minutes
        ]

    def sources(self) -> list[Source]:
        return self.horizon()


Rule = Annotated[ThresholdRule | BandRule | TrendRule | ForecastRule, Field(discriminator="kind")]


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: Defaults = Field(default_factory=Defaults)
    rule: list[Rule] = Field(default_factory=list)


@dataclass(frozen=True)
class RuleSet:
    """Validated rules; ``disabled`` names the rules left out and why."""

    rules: tuple[ThresholdRule | BandRule | TrendRule | ForecastRule, ...]
    defaults: Defaults
    disabled: tuple[tuple[str, str], ...] = ()

    def __iter__(self) -> Any:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, rule_id: str) -> ThresholdRule | BandRule | TrendRule | ForecastRule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def escalation(self, rule: _RuleBase) -> list[EscalationStep]:
        return rule.escalation if rule.escalation is not None else self.defaults.escalation

    def suppress_minutes(self, rule: _RuleBase) -> float:
        if rule.suppress_minutes is not None:
            return rule.suppress_minutes
        return self.defaults.suppress_minutes

    def modules(self) -> list[str]:
        """The modules the rules read, in first-use order."""
        return list(dict.fromkeys(s.module for r in self.rules for s in r.sources()))

    def bind(
        self, outputs: Mapping[str, Sequence[str]], *, unknown: Literal["error", "warn"] = "warn"
    ) -> RuleSet:
        """The rules that ``outputs`` (module -> its output names) can evaluate.

        A rule over an unknown module is an error, or (``warn``) left out with a
        warning; an unknown output of a known module is always an error.
        """
        kept: list[ThresholdRule | BandRule | TrendRule | ForecastRule] = []
        disabled = list(self.disabled)
        for rule in self.rules:
            missing = sorted({s.module for s in rule.sources() if s.module not in outputs})
            if missing:
                reason = f"unknown module {missing[0]!r}"
                if unknown == "error":
                    raise AlarmConfigError(f"rule {rule.id!r}: {reason}")
                log.warning("alarm rule %r disabled: %s", rule.id, reason)
                disabled.append((rule.id, reason))
                continue
            for source in rule.sources():
                if source.output not in outputs[source.module]:
                    raise AlarmConfigError(
                        f"rule {rule.id!r}: module {source.module!r} has no output "
                        f"{source.output!r} (it has {list(outputs[source.module])})"
                    )
            kept.append(rule)
        return RuleSet(tuple(kept), self.defaults, tuple(disabled))


def _location(loc: Sequence[int | str], raw: Mapping[str, Any]) -> str:
    """``rule 'news2-high' (rule[0]), field 'value'`` from a pydantic error location."""
    parts = list(loc)
    if len(parts) >= 2 and parts[0] == "rule" and isinstance(parts[1], int):
        index = parts[1]
        rules = raw.get("rule")
        rule_id = None
        if isinstance(rules, list) and index < len(rules) and isinstance(rules[index], dict):
            rule_id = rules[index].get("id")
        # The discriminated union adds the kind as a location step: not a field name.
        rest = [str(p) for p in parts[2:] if p not in ("threshold", "band", "trend", "forecast")]
        name = f"rule {rule_id!r}" if rule_id is not None else "rule"
        where = f"{name} (rule[{index}])"
        return f"{where}, field {'.'.join(rest)!r}" if rest else where
    return f"field {'.'.join(str(p) for p in parts)!r}" if parts else "file"


def parse_rules(raw: Mapping[str, Any], *, origin: str = "alarm rules") -> RuleSet:
    """Validate a rules document (the parsed TOML/JSON); AlarmConfigError names each fault."""
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        faults = []
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, "kind")  # the rule's kind is what is wrong or missing
            faults.append(f"{_location(loc, raw)}: {error['msg']}")
        raise AlarmConfigError(f"{origin}: " + "; ".join(faults)) from exc
    seen: set[str] = set()
    for index, rule in enumerate(parsed.rule):
        if rule.id in seen:
            raise AlarmConfigError(
                f"{origin}: rule {rule.id!r} (rule[{index}]), field 'id': defined twice"
            )
        seen.add(rule.id)
    enabled = tuple(r for r in parsed.rule if r.enabled)
    disabled = tuple((r.id, "disabled in the rules file") for r in parsed.rule if not r.enabled)
    return RuleSet(enabled, parsed.defaults, disabled)


def load_rules(path: Path | None = None) -> RuleSet:
    """The rules of a TOML (``.toml``) or JSON file; the shipped defaults without one."""
    if path is None:
        from medtwin.twins.alarms.defaults import DEFAULT_RULES

        return parse_rules(tomllib.loads(DEFAULT_RULES), origin="default alarm rules")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AlarmConfigError(f"cannot read the alarm rules file {path}: {exc}") from exc
    try:
        raw = json.loads(text) if Path(path).suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise AlarmConfigError(
            f"{path}: not valid {Path(path).suffix[1:] or 'TOML'}: {exc}"
        ) from exc
    if not isinstance(raw, dict):
        raise AlarmConfigError(f"{path}: the document must be a table/object")
    return parse_rules(raw, origin=str(path))
