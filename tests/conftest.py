"""Fixtures shared across test modules."""

from stage_b_fixtures import stage_b_world  # noqa: F401 - registers the fixture
