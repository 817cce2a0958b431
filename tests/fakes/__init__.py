"""Test doubles used by the psyjudge test suite."""
