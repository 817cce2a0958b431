"""`psyjudge serve`: the cascade as an inline guardrail service (FastAPI on uvicorn)."""

from judge.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
