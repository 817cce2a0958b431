"""Programmatic checks declared in rubric data: lexicons, patterns, crisis resources, refusals and
apologies. Each answers one named sub-question with evidence in the original text."""

from judge.checks import lexicon, pattern, refusal, resources  # noqa: F401  (register the kinds)
from judge.checks.base import (
    CHECK_KINDS,
    Check,
    CheckDefinitionError,
    CheckEnv,
    CheckSpec,
    Finding,
    Subject,
    compile_checks,
    register_check,
)

__all__ = ["CHECK_KINDS", "Check", "CheckDefinitionError", "CheckEnv", "CheckSpec", "Finding", "Subject",
           "compile_checks", "register_check"]
