"""Judging programs: LLM-written checks, validated and run in a sandbox."""
