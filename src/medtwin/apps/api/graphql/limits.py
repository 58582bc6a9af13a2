"""Limits on what one GraphQL document may ask for, checked before anything runs.

Provenance nests without end, so a client could otherwise ask for an arbitrarily
deep or wide tree; fragments spread many times could multiply it further. Every
limit is a validation error (a GraphQL error, HTTP 200), never a 500.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.extensions.query_depth_limiter import IgnoreContext

# Deepest selection (a provenance tree of about ten levels below derived { provenance }).
MAX_DEPTH = 12
# Field selections in one operation, every fragment spread counted in full.
MAX_SELECTIONS = 500
MAX_ALIASES = 30
# Lexical tokens in one document; GraphiQL's introspection query is about 700.
MAX_TOKENS = 5000


def _introspection(context: IgnoreContext) -> bool:
    # The schema's own description is bounded by the schema, not by patient data.
    return context.field_name.startswith("__")


class SelectionBudget(ValidationRule):
    """Refuses operations that select more than MAX_SELECTIONS fields in all."""

    def __init__(self, context: ValidationContext) -> None:
        super().__init__(context)
        self._fragments = {
            d.name.value: d
            for d in context.document.definitions
            if isinstance(d, FragmentDefinitionNode)
        }
        self._counted: dict[str, int] = {}
        self._counting: set[str] = set()

    def _count(self, selections: SelectionSetNode | None) -> int:
        total = 0
        for selection in selections.selections if selections else ():
            if isinstance(selection, FieldNode):
                if not selection.name.value.startswith("__"):
                    total += 1 + self._count(selection.selection_set)
            elif isinstance(selection, InlineFragmentNode):
                total += self._count(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                total += self._fragment(selection.name.value)
        return total

    def _fragment(self, name: str) -> int:
        # Memoized, so that fragments spreading fragments cost linear time to count; a
        # cycle counts nothing here (NoFragmentCycles reports it).
        if name in self._counted:
            return self._counted[name]
        fragment = self._fragments.get(name)
        if fragment is None or name in self._counting:
            return 0
        self._counting.add(name)
        count = self._count(fragment.selection_set)
        self._counting.discard(name)
        self._counted[name] = count
        return count

    def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
        count = self._count(node.selection_set)
        if count > MAX_SELECTIONS:
            self.report_error(
                GraphQLError(
                    f"the operation selects {count} fields, more than {MAX_SELECTIONS}",
                    node,
                    extensions={"code": "QUERY_TOO_COSTLY"},
                )
            )


def extensions() -> list[Callable[[], SchemaExtension]]:
    """Factories of the schema extensions enforcing every limit."""
    return [
        partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
        partial(QueryDepthLimiter, max_depth=MAX_DEPTH, should_ignore=_introspection),
        partial(MaxAliasesLimiter, max_alias_count=MAX_ALIASES),
        partial(AddValidationRules, [SelectionBudget]),
    ]
