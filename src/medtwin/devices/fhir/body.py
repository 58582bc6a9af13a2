"""A resource as the Bundle reader hands it over: its JSON with slots for its id and references.

Loading many Bundles, the reader process parses and checks each resource; most
resources (a Claim, an Encounter) need nothing more of the committing process
than their id, their references rewritten and their JSON sealed and stored.
Shipping them as parsed objects would make that process rebuild every object
(unpickling costs as much as parsing). A :class:`Body` is instead the
resource's compact JSON cut at its slots: the ``id`` value and each string
``reference``. The committing process fills the slots (:meth:`Body.content`)
and never builds the objects, unless a rare path needs them
(:meth:`Body.materialize`: an update compared with the stored version, an
entry quarantined, the element path of a fault).

The slots are found by marks (a NUL, a random nonce and the slot number) put
in the copy before it is dumped; a resource whose text holds a mark already,
or that orjson cannot dump, gets no Body (the caller keeps the parsed copy).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

import orjson

__all__ = ["ID_SLOT", "Body", "make_body"]

ID_SLOT = -1
# Per process: a Body names its nonce (the reader's may differ from the committer's).
_NONCE = secrets.token_hex(8)


def _mark(nonce: str, slot: int) -> str:
    return f"\x00{nonce}{'i' if slot == ID_SLOT else slot}"


@dataclass(slots=True)
class Body:
    """A resource's compact JSON cut at its slots.

    ``chunks`` are the text between the slots, ``slots`` which slot each gap
    takes (:data:`ID_SLOT` or a reference's number); ``holders`` one small
    ``{"reference": ...}`` object per reference (the caller rewrites them);
    ``id_value`` the id the JSON carries (None: it has none); ``subject`` and
    ``patient_refs`` the references of ``subject``, and of ``subject``,
    ``patient`` and ``beneficiary`` (in that order), by number; ``nonce`` that
    of the marks (of the process that made it).
    """

    chunks: tuple[bytes, ...]
    slots: tuple[int, ...]
    holders: list[dict[str, Any]]
    id_value: Any
    subject: int | None
    patient_refs: tuple[int, ...]
    nonce: str

    def __reduce__(self) -> tuple[type[Body], tuple[Any, ...]]:
        # Rebuilt by __init__ from its values: the committing process unpickles
        # thousands, and by name (a __dict__ or slots restored) takes half as long again.
        return Body, _body_values(self)

    def content(self) -> bytes:
        """The resource's compact JSON with the slots' current values (its id given)."""
        holders, id_value, dumps = self.holders, self.id_value, orjson.dumps
        assert id_value is not None
        values = [dumps(id_value if s == ID_SLOT else holders[s]["reference"]) for s in self.slots]
        values.append(b"")
        return b"".join([part for pair in zip(self.chunks, values, strict=True) for part in pair])

    def materialize(self) -> dict[str, Any]:
        """The resource as parsed JSON, with the current values; its reference holders
        are :attr:`holders` themselves (rewriting one rewrites the resource)."""
        parts = [self.chunks[0]]
        for slot, chunk in zip(self.slots, self.chunks[1:], strict=True):
            parts += [orjson.dumps(_mark(self.nonce, slot)), chunk]
        resource: dict[str, Any] = orjson.loads(b"".join(parts))
        if self.id_value is None:
            del resource["id"]
        else:
            resource["id"] = self.id_value
        by_mark = {_mark(self.nonce, i): holder for i, holder in enumerate(self.holders)}
        stack: list[Any] = [resource]
        while stack:
            value = stack.pop()
            pairs = value.items() if isinstance(value, dict) else enumerate(value)
            for key, child in list(pairs):
                if isinstance(child, dict):
                    mark = child.get("reference")
                    holder = by_mark.get(mark) if isinstance(mark, str) else None
                    if holder is not None:
                        # The caller's holder takes the parsed one's place, in key order.
                        current = holder["reference"]
                        holder.clear()
                        holder.update(child, reference=current)
                        value[key] = child = holder
                    stack.append(child)
                elif isinstance(child, list):
                    stack.append(child)
        return resource


def _marks(nonce: str, count: int) -> tuple[list[str], dict[bytes, int]]:
    """The marks of slots 0 to ``count - 1`` and of the id (last), and the slot of
    each mark's name as orjson writes it (made once per nonce, grown as needed)."""
    found = _MARKS.get(nonce)
    if found is None or len(found[0]) <= count:
        size = max(count + 1, 64)
        marks = [*(_mark(nonce, slot) for slot in range(size - 1)), _mark(nonce, ID_SLOT)]
        names = {b"i": ID_SLOT, **{str(slot).encode(): slot for slot in range(size - 1)}}
        _MARKS.clear()
        found = _MARKS[nonce] = (marks, names)
    return found


_MARKS: dict[str, tuple[list[str], dict[bytes, int]]] = {}


_body_values = attrgetter(*(f.name for f in fields(Body)))


def make_body(
    resource: dict[str, Any],
    holders: Sequence[dict[str, Any]],
) -> Body | None:
    """The Body of a checked copy ``resource`` whose objects with a string ``reference``
    are ``holders`` (``resource`` is left as it was); None when it cannot have one."""
    original_id = resource.get("id")
    had_id = "id" in resource
    if had_id and not isinstance(original_id, str):
        return None
    nonce = _NONCE
    marks, names = _marks(nonce, len(holders))
    slot_of = {id(holder): slot for slot, holder in enumerate(holders)}
    if id(resource) in slot_of:
        return None
    references = [holder["reference"] for holder in holders]
    try:
        for holder, mark in zip(holders, marks, strict=False):  # marks: the id's too
            holder["reference"] = mark
        resource["id"] = marks[-1]
        text = orjson.dumps(resource)
    except orjson.JSONEncodeError:
        return None
    finally:
        for holder, reference in zip(holders, references, strict=True):
            holder["reference"] = reference
        if had_id:
            resource["id"] = original_id
        else:
            del resource["id"]
    # Cut at the opening quote and the mark as orjson writes them (the NUL escaped):
    # each part after the first starts with the mark's name and its closing quote.
    parts = text.split(b'"\\u0000' + nonce.encode())
    chunks = [parts[0]]
    slots: list[int] = []
    for part in parts[1:]:
        name, quote, chunk = part.partition(b'"')
        if not quote:
            return None
        slots.append(names.get(name, -2))
        chunks.append(chunk)
    # Each slot exactly once: a mark in the resource's own text would break the cut.
    if sorted(slots) != list(range(ID_SLOT, len(holders))):
        return None
    # Top-level references only: the holders are the copy's own objects.
    subject = slot_of.get(id(resource.get("subject")))
    patient = slot_of.get(id(resource.get("patient")))
    beneficiary = slot_of.get(id(resource.get("beneficiary")))
    patient_refs: tuple[int, ...] = ()
    for slot in (subject, patient, beneficiary):
        if slot is not None:
            patient_refs += (slot,)
    return Body(
        tuple(chunks),
        tuple(slots),
        [{"reference": reference} for reference in references],
        original_id,
        subject,
        patient_refs,
        nonce,
    )
