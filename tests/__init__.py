"""psyjudge test suite."""
