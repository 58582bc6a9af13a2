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
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["ID_SLOT", "Body", "make_body"]

ID_SLOT = -1
# Per process: a Body names its nonce (the reader's may differ from the committer's).
_NONCE = secrets.token_hex(8)


def _mark(nonce: str, slot: int) -> str:
    return f"\x00{nonce}{'i' if slot == ID_SLOT else slot}"


# No slots: a slotted dataclass is unpickled field by field in Python, a plain
# one by one update of its __dict__ (the committing process unpickles thousands).
@dataclass
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


def make_body(
    resource: dict[str, Any],
    holders: Sequence[dict[str, Any]],
) -> Body | None:
    """The Body of a checked copy ``resource`` whose objects with a string ``reference``
    are ``holders`` (``resource`` is left as it was); None when it cannot have one."""
    original_id = resource.get("id")
    if any(holder is resource for holder in holders) or (
        "id" in resource and not isinstance(original_id, str)
    ):
        return None
    references = [holder["reference"] for holder in holders]
    had_id = "id" in resource
    try:
        for slot, holder in enumerate(holders):
            holder["reference"] = _mark(_NONCE, slot)
        resource["id"] = _mark(_NONCE, ID_SLOT)
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
    # The opening quote and the mark as orjson writes them (the NUL escaped); the text
    # is cut by offsets (each byte copied once: the attachments of a Claim are large).
    cut = b'"\\u0000' + _NONCE.encode()
    chunks: list[bytes] = []
    slots: list[int] = []
    start = 0
    found = text.find(cut)
    while found >= 0:
        chunks.append(text[start:found])
        name_at = found + len(cut)
        start = text.find(b'"', name_at) + 1
        if not start:
            return None
        name = text[name_at : start - 1]
        slots.append(ID_SLOT if name == b"i" else int(name) if name.isdigit() else -2)
        found = text.find(cut, start)
    chunks.append(text[start:])
    # Each slot exactly once: a mark in the resource's own text would break the cut.
    if sorted(slots) != list(range(ID_SLOT, len(holders))):
        return None
    slot_of = {id(holder): slot for slot, holder in enumerate(holders)}
    # Top-level references only: the holders are the copy's own objects.
    named = [slot_of.get(id(resource.get(name))) for name in ("subject", "patient", "beneficiary")]
    subject = named[0]
    patient_refs = tuple(slot for slot in named if slot is not None)
    return Body(
        tuple(chunks),
        tuple(slots),
        [{"reference": reference} for reference in references],
        original_id,
        subject,
        patient_refs,
        _NONCE,
    )
