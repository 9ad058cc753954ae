"""Fixtures for the enrollment tests (definitions live in enroll_fixtures.py, a unique name)."""

from enroll_fixtures import mesh

__all__ = ["mesh"]
