"""GraphQL at /graphql (Strawberry): the REST API's data and rules, nested as asked."""

from medtwin.apps.api.graphql.endpoint import install
from medtwin.apps.api.graphql.schema import schema

__all__ = ["install", "schema"]
