"""The `psyjudge report` command(s). Placeholder module: registered by judge.cli, filled in by its owner."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the psyjudge app."""
