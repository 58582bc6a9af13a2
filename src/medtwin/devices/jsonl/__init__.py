"""JSON-lines files of observation items (one API item per line)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Line", "read_jsonl"]


@dataclass(frozen=True, slots=True)
class Line:
    """One non-blank line: its number, raw text, and the parsed item or why it is not JSON."""

    number: int
    text: str
    item: Any = None
    error: str | None = None
    column: int = 0


def read_jsonl(path: Path) -> Iterator[Line]:
    """Lines of ``path`` (UTF-8, a byte-order mark tolerated), parsed one by one."""
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.strip()
            if not text:
                continue
            try:
                yield Line(number, text, json.loads(text))
            except json.JSONDecodeError as exc:
                yield Line(number, text, error=f"line is not JSON: {exc.msg}", column=exc.colno)
