"""The `psyjudge purge` command: remove a run folder's conversation text (judge.purge does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from judge.cli_common import EXIT_INPUT, EXIT_USAGE, _fail


def purge(
    run_dir: Annotated[Path, typer.Argument(
        help="The run folder to purge (what psyjudge score, run, eval or probe wrote).", show_default=False)],
) -> None:
    """Remove the stored conversation text of a run folder, keeping its labels and metrics: verdicts
    lose their response, quotes, rationales, judge prompts and raw replies; responses.jsonl,
    transcripts.jsonl and report.html are deleted. eval, gate, compare and report still work on the
    folder. The judge and target caches are elsewhere and are not touched. Running it twice is harmless."""
    from judge.cache import default_cache_dir
    from judge.purge import PurgeError, purge_run

    try:
        summary = purge_run(run_dir)
    except PurgeError as exc:
        _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        _fail(f"{exc.filename or run_dir}: {exc.strerror or exc}", EXIT_INPUT)
    if not summary.removed_anything:
        typer.echo(f"{run_dir}: no conversation text left to remove")
    for name, count in summary.blanked.items():
        if count:
            typer.echo(f"{name}: {count} text value(s) blanked")
    for name, count in summary.dropped_lines.items():
        if count:
            typer.echo(f"{name}: {count} unreadable line(s) dropped")
    for name in summary.deleted:
        typer.echo(f"{name}: deleted")
    typer.echo(f"The judge and target caches also hold text and are not touched (default: {default_cache_dir()}; "
               "a run given --cache-dir keeps them there). Delete that folder to remove them.")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the psyjudge app."""
    app.command("purge")(purge)
