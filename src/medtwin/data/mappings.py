"""Per-sender code mappings: a sender's local code -> a registry code (and its unit).

Hospital feeds send local codes (``GLU^Glucose^99LAB``) beside or instead of LOINC.
The ``code_mappings`` table says, per source system (for HL7 v2 the sending
application, MSH-3), what a local code means in medtwin's registry. Adapters
look mappings up when a code's system is not LOINC; codes without a mapping
are stored flagged ``unmapped`` and listed by :func:`unmapped_codes`, so that an
operator can add the mapping and replay what was refused meanwhile.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from medtwin.core.records import QualityFlag
from medtwin.data.store import SqlStore
from medtwin.data.store import schema as tables

__all__ = [
    "CodeMapping",
    "UnmappedCode",
    "add_mapping",
    "list_mappings",
    "lookup",
    "remove_mapping",
    "unmapped_codes",
]

_MAX = 256


@dataclass(frozen=True, slots=True)
class CodeMapping:
    """``local_code`` of ``source_system`` means registry ``code``; values in ``unit`` if set."""

    source_system: str
    local_code: str
    code: str
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class UnmappedCode:
    """A code stored flagged unmapped: who sent it, its system and how many times."""

    source: str
    system: str
    code: str
    count: int


def add_mapping(
    store: SqlStore, source_system: str, local_code: str, code: str, unit: str | None = None
) -> CodeMapping:
    """Add or replace the mapping of (``source_system``, ``local_code``); ValueError if empty."""
    for name, value in (("source system", source_system), ("local code", local_code)):
        if not value.strip() or len(value) > _MAX:
            raise ValueError(f"{name} must be 1-{_MAX} characters")
    if not code.strip() or len(code) > _MAX:
        raise ValueError(f"code must be 1-{_MAX} characters")
    if unit is not None and len(unit) > _MAX:
        raise ValueError(f"unit must be at most {_MAX} characters")
    values = {"source_system": source_system, "local_code": local_code, "code": code, "unit": unit}
    with store.transaction() as conn:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(tables.code_mappings).values(**values)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["source_system", "local_code"],
                set_={"code": code, "unit": unit},
            )
        )
    return CodeMapping(source_system, local_code, code, unit)


def remove_mapping(store: SqlStore, source_system: str, local_code: str) -> bool:
    """Remove one mapping; whether there was one."""
    table = tables.code_mappings
    with store.transaction() as conn:
        result = conn.execute(
            sa.delete(table).where(
                table.c.source_system == source_system, table.c.local_code == local_code
            )
        )
    return bool(result.rowcount)


def list_mappings(store: SqlStore, source_system: str | None = None) -> list[CodeMapping]:
    """Every mapping (of one source system), ordered by source system and local code."""
    table = tables.code_mappings
    query = sa.select(table).order_by(table.c.source_system, table.c.local_code)
    if source_system is not None:
        query = query.where(table.c.source_system == source_system)
    with store.reading() as conn:
        rows = conn.execute(query).all()
    return [CodeMapping(r.source_system, r.local_code, r.code, r.unit) for r in rows]


def lookup(
    conn: Connection, source_system: str, local_codes: Collection[str]
) -> dict[str, CodeMapping]:
    """The mappings of ``local_codes`` for one source system (one indexed query)."""
    if not local_codes:
        return {}
    table = tables.code_mappings
    rows = conn.execute(
        sa.select(table).where(
            table.c.source_system == source_system, table.c.local_code.in_(sorted(local_codes))
        )
    ).all()
    return {r.local_code: CodeMapping(r.source_system, r.local_code, r.code, r.unit) for r in rows}


def unmapped_codes(store: SqlStore, source: str | None = None) -> list[UnmappedCode]:
    """The codes stored flagged unmapped, per source and system, most frequent first."""
    table = tables.observations
    count = sa.func.count().label("n")
    query = (
        sa.select(table.c.source, table.c.system, table.c.code, count)
        .where(table.c.flags.op("&")(int(QualityFlag.UNMAPPED)) != 0)
        .group_by(table.c.source, table.c.system, table.c.code)
        .order_by(count.desc(), table.c.source, table.c.code)
    )
    if source is not None:
        query = query.where(table.c.source == source)
    with store.reading() as conn:
        rows = conn.execute(query).all()
    return [UnmappedCode(r.source, r.system, r.code, int(r.n)) for r in rows]
