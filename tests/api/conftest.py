"""The API tests use the records fixtures: a node, a visit, a stored record."""

from tests.records.conftest import visit  # noqa: F401  (a fixture, used by name)
